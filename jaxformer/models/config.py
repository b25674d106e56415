"""ModelConfig: one frozen, hashable dataclass describes every jaxformer architecture; named variants.

    cfg = ModelConfig.variant("gpt2-small")                     # the published GPT-2 small (124M)
    cfg = ModelConfig.variant("gpt2-tiny", positional="rope")   # a named variant with overrides

Being frozen and hashable it can be a static argument of `jax.jit`. Field names follow the papers (d_model,
d_ff); `num_kv_heads < num_heads` gives grouped-query attention (1: multi-query).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxformer import checks
from jaxformer.nn.blocks import BlockConfig
from jaxformer.nn.remat import REMAT_POLICIES
from jaxformer.ops import RopeScaling

# A sparse config's fields for one of its dense layers (ModelConfig.dense_layers).
_DENSE_FFN = dict(num_experts=0, expert_d_ff=None, shared_expert_d_ff=None, capacity_factor=None)

# The kinds of layer `ModelConfig.layer_types` names: full causal attention, or within a sliding window.
LAYER_TYPES = ("global", "local")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(BlockConfig):
    """Architecture of a GPT, BERT, encoder-decoder Transformer or ViT: the block fields of `BlockConfig`
    (jaxformer/nn/blocks.py: `d_model` (D), `num_heads` (N), `d_ff` (F), `num_kv_heads` (K, default N),
    `head_dim` (H, default D / N), norms, activation, dropout rates, `positional`, attention options, dtypes),
    plus the model-level fields below. Keyword arguments only.

    Core: `vocab_size` (V; 0 for ViT), `num_layers` (L; the encoder's in an encoder-decoder), `max_len` (longest
    sequence; size of the learned position table). `dropout_rate` also applies to the embeddings.
    Embeddings: `tie_embeddings` (output logits use the input embedding), `head_bias` (a bias on the logits),
    `final_logit_softcap` (Gemma 2: logits z become `cap * tanh(z / cap)`, in float32; None: off),
    `embed_scale` (multiply token embeddings by sqrt(D), as Vaswani et al.; the factor is rounded to the compute
    dtype first, as Gemma does: sqrt(3072) is 55.5 in bfloat16), `embed_norm` (a norm after the
    embedding sum, as BERT), `type_vocab_size` (BERT segment embeddings; 0 = none), `pooler` / `mlm_head`
    (BERT's [CLS] pooler and masked-LM head: a checkpoint may have either or both; a ViT without classes has the
    pooler too), `init_std` (embeddings), and the position encoding `positional` (a block field: learned |
    sinusoidal | rope | alibi | none).
    Per-layer attention (GPT): `layer_types`, a tuple of L entries "global" | "local" (None: every layer alike,
    with `sliding_window` on all of them if set). A local layer attends within `sliding_window` (required) and
    rotates with `local_rope_base` (None: `rope_base`) and `local_rope_scaling` (None: no scaling); a global layer
    sees every earlier position with `rope_base` and `rope_scaling` (Gemma 2: alternating; Gemma 3: 5 local, 1
    global; local 10k, global 1M with linear scaling 8). `layer_config(kind)` is the `BlockConfig` a layer of that
    kind is built from. With `scan_layers` the stack scans over the repeating group of kinds (nn: models/stack.py).
    Gemma 4's global layers may differ in shape: `global_head_dim`, `global_num_kv_heads` (None: head_dim,
    num_kv_heads) and `global_value_is_key` (no value projection: values are the keys' raw projection).
    KV sharing (Gemma 4): the last `num_kv_shared_layers` layers project no keys or values and keep no cache;
    each attends over those of the last earlier layer of its kind (`kv_sources`), and its FFN is `kv_shared_d_ff`
    wide (None: d_ff; Gemma 4's double-wide MLP is 2 d_ff). Per-layer inputs (Gemma 4, `per_layer_input_dim` P >
    0): a second embedding `[per_layer_vocab_size (None: V), L P]` and a projection of the input embedding give
    each layer its own `[B, T, P]` input (models/gpt.py).
    Mixture of experts (the block fields `num_experts` E > 0, `experts_per_token`, `expert_d_ff`, ...; nn/moe.py):
    `dense_layers` lists the layers that keep the dense FFN of width `d_ff` (Qwen3-MoE's mlp_only_layers; empty:
    every layer is sparse). Training adds `router_aux_loss_coef` times the load-balancing loss (Switch / Mixtral,
    over all sparse layers' tokens as transformers' `load_balancing_loss_func`) and `router_z_loss_coef` times
    ST-MoE's router z-loss to the task's loss (`GPT.router_losses`).
    Encoder-decoder: `num_decoder_layers` (default `num_layers`). ViT: `image_size`, `patch_size`,
    `num_channels`, `num_classes`. Execution: `scan_layers` (one compiled block, scanned over L: compile time
    independent of depth), `vocab_multiple` (store the embedding / output tables with V rounded up to a multiple
    of this, e.g. 128, for fast matmuls as nanoGPT's 50304; the logits keep V columns), `remat` (none | full |
    dots | dots_no_batch: what each block's backward pass recomputes instead of storing; nn/remat.py).

    `replace(**changes)` re-derives `num_kv_heads` / `head_dim` that followed the old widths (see
    `BlockConfig.replace`).
    """

    vocab_size: int
    num_layers: int
    max_len: int
    num_decoder_layers: int | None = None
    tie_embeddings: bool = True
    head_bias: bool = False
    embed_scale: bool = False
    embed_norm: bool = False
    type_vocab_size: int = 0
    pooler: bool = True
    mlm_head: bool = True
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_classes: int = 0
    scan_layers: bool = False
    remat: str = "none"
    vocab_multiple: int = 1
    init_std: float = 0.02
    final_logit_softcap: float | None = None
    layer_types: tuple[str, ...] | None = None
    local_rope_base: float | None = None
    local_rope_scaling: RopeScaling | None = None
    global_head_dim: int | None = None
    global_num_kv_heads: int | None = None
    global_value_is_key: bool = False
    num_kv_shared_layers: int = 0
    kv_shared_d_ff: int | None = None
    per_layer_vocab_size: int | None = None
    dense_layers: tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        self._check_positive_ints("num_layers", "max_len", "vocab_multiple", "image_size", "patch_size", "num_channels")
        for name in ("vocab_size", "type_vocab_size", "num_classes"):
            object.__setattr__(self, name, checks.check_int(f"{owner}.{name}", getattr(self, name), low=0))
        checks.check_choice(f"{owner}.remat", self.remat, REMAT_POLICIES)
        if self.num_decoder_layers is not None:
            value = checks.check_positive_int(f"{owner}.num_decoder_layers", self.num_decoder_layers, " or None")
            object.__setattr__(self, "num_decoder_layers", value)
        self._check_flags(
            "tie_embeddings", "head_bias", "embed_scale", "embed_norm", "pooler", "mlm_head", "scan_layers"
        )
        checks.check_real(f"{owner}.init_std", self.init_std, low=0.0)
        if self.final_logit_softcap is not None:
            cap = checks.check_positive_real(f"{owner}.final_logit_softcap", self.final_logit_softcap)
            object.__setattr__(self, "final_logit_softcap", cap)
        self._check_layer_types(owner)
        self._check_gemma4(owner)
        self._check_dense_layers(owner)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"{owner}.image_size={self.image_size} must be a multiple of patch_size={self.patch_size}."
            )

    def _check_layer_types(self, owner: str) -> None:
        types = self.layer_types
        if types is not None:
            if isinstance(types, str) or not isinstance(types, list | tuple):
                raise TypeError(
                    f"{owner}.layer_types must be a tuple of {LAYER_TYPES} per layer, or None; got {types!r}."
                )
            types = tuple(types)  # lists (from a config file) are stored as a hashable tuple
            for i, kind in enumerate(types):
                checks.check_choice(f"{owner}.layer_types[{i}]", kind, LAYER_TYPES)
            if len(types) != self.num_layers:
                raise ValueError(
                    f"{owner}.layer_types has {len(types)} entries; it needs one per layer "
                    f"(num_layers={self.num_layers})."
                )
            if "local" in types and self.sliding_window is None:
                raise ValueError(f"{owner}.layer_types has local layers: set sliding_window (their window).")
            object.__setattr__(self, "layer_types", types)
        if self.local_rope_base is not None:
            object.__setattr__(
                self, "local_rope_base", checks.check_positive_real(f"{owner}.local_rope_base", self.local_rope_base)
            )
        if self.local_rope_scaling is not None and not isinstance(self.local_rope_scaling, RopeScaling):
            raise TypeError(
                f"{owner}.local_rope_scaling must be an ops.RopeScaling or None; got {self.local_rope_scaling!r}."
            )
        if (self.local_rope_base is not None or self.local_rope_scaling is not None) and "local" not in (types or ()):
            raise ValueError(
                f"{owner}.local_rope_base / local_rope_scaling are for the local layers of layer_types; got "
                f"layer_types={types!r}."
            )

    def _check_gemma4(self, owner: str) -> None:
        for name in ("global_head_dim", "global_num_kv_heads", "kv_shared_d_ff", "per_layer_vocab_size"):
            if getattr(self, name) is not None:
                self._check_positive_ints(name)
        self._check_flags("global_value_is_key")
        n = checks.check_int(f"{owner}.num_kv_shared_layers", self.num_kv_shared_layers, low=0)
        object.__setattr__(self, "num_kv_shared_layers", n)
        uses_global = self.global_head_dim is not None or self.global_num_kv_heads is not None
        if (uses_global or self.global_value_is_key) and "global" not in (self.layer_types or ()):
            raise ValueError(
                f"{owner}.global_head_dim / global_num_kv_heads / global_value_is_key shape the global layers of "
                f"layer_types; got layer_types={self.layer_types!r}."
            )
        if self.global_num_kv_heads is not None and self.num_heads % self.global_num_kv_heads:
            raise ValueError(
                f"{owner}.num_heads={self.num_heads} must be a multiple of global_num_kv_heads="
                f"{self.global_num_kv_heads}."
            )
        if n >= self.num_layers:
            raise ValueError(
                f"{owner}.num_kv_shared_layers={n} must be < num_layers={self.num_layers}: a shared layer reuses the "
                "keys and values of an earlier layer that computes its own."
            )
        if self.kv_shared_d_ff is not None and n == 0:
            raise ValueError(f"{owner}.kv_shared_d_ff is the FFN width of KV-shared layers; num_kv_shared_layers=0.")
        if self.per_layer_vocab_size is not None and self.per_layer_input_dim == 0:
            raise ValueError(f"{owner}.per_layer_vocab_size needs per_layer_input_dim > 0 (the per-layer inputs).")
        self.kv_sources  # noqa: B018  (raises when a shared layer's kind has no earlier layer)

    def _check_dense_layers(self, owner: str) -> None:
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            object.__setattr__(self, name, checks.check_real(f"{owner}.{name}", getattr(self, name), low=0.0))
        layers = self.dense_layers
        if isinstance(layers, str) or not isinstance(layers, list | tuple):
            raise TypeError(f"{owner}.dense_layers must be a tuple of layer indices; got {layers!r}.")
        L = self.num_layers
        layers = tuple(
            checks.check_int(f"{owner}.dense_layers[{i}]", j, low=0, high=L - 1, expected=f"a layer index in [0, {L})")
            for i, j in enumerate(layers)
        )
        if len(set(layers)) != len(layers):
            raise ValueError(f"{owner}.dense_layers names a layer twice: {layers}.")
        if layers and not self.num_experts:
            raise ValueError(
                f"{owner}.dense_layers={layers} picks the dense layers of a mixture of experts; num_experts=0."
            )
        object.__setattr__(self, "dense_layers", tuple(sorted(layers)))

    def is_sparse(self, index: int) -> bool:
        """Whether layer `index` has a mixture-of-experts feed-forward."""
        return bool(self.num_experts) and index not in self.dense_layers

    def layer_type(self, index: int) -> str | None:
        """The kind ("global" | "local") of layer `index`; None without `layer_types`."""
        return None if self.layer_types is None else self.layer_types[index]

    @property
    def kv_sources(self) -> tuple[int | None, ...]:
        """Per layer: the index of the layer whose keys and values it attends over (None: its own). With
        `num_kv_shared_layers` = n the last n layers take those of the last layer of their kind before them."""
        first_shared = self.num_layers - self.num_kv_shared_layers
        sources: list[int | None] = [None] * first_shared
        for i in range(first_shared, self.num_layers):
            kind = self.layer_type(i)
            earlier = [j for j in range(first_shared) if self.layer_type(j) == kind]
            if not earlier:
                raise ValueError(
                    f"ModelConfig: layer {i} ({kind or 'every'} layer) shares keys and values, but no layer of its "
                    f"kind precedes the {self.num_kv_shared_layers} shared layers."
                )
            sources.append(earlier[-1])
        return tuple(sources)

    @property
    def layer_kinds(self) -> tuple[tuple[str | None, bool, bool], ...] | None:
        """Per layer (kind, whether it shares another layer's keys and values, whether its FFN is a mixture of
        experts), or None when every layer is built alike (no `layer_types`, no KV sharing, no `dense_layers`)."""
        if self.layer_types is None and self.num_kv_shared_layers == 0 and not self.dense_layers:
            return None
        first_shared = self.num_layers - self.num_kv_shared_layers
        return tuple((self.layer_type(i), i >= first_shared, self.is_sparse(i)) for i in range(self.num_layers))

    def layer_config(self, kind: str | None, kv_shared: bool = False, sparse: bool | None = None) -> ModelConfig:
        """The config a layer of `kind` ("global" | "local"; None: the layers of a config without `layer_types`)
        is built from: the window, RoPE and shapes of its kind, `shared_kv` and the FFN width of a KV-shared layer
        (`kv_shared`), no experts when `sparse` is False (a dense layer; None: as the config), and no per-layer
        fields."""
        dense = sparse is False and bool(self.num_experts)
        if kind is None and not kv_shared and not dense:
            return self
        if kind is not None:
            checks.check_choice("kind", kind, LAYER_TYPES)
        local, is_global = kind == "local", kind == "global"
        return dataclasses.replace(
            self,
            layer_types=None,
            local_rope_base=None,
            local_rope_scaling=None,
            global_head_dim=None,
            global_num_kv_heads=None,
            global_value_is_key=False,
            num_kv_shared_layers=0,
            kv_shared_d_ff=None,
            sliding_window=None if is_global else self.sliding_window,
            rope_base=(self.local_rope_base or self.rope_base) if local else self.rope_base,
            rope_scaling=self.local_rope_scaling if local else self.rope_scaling,
            head_dim=(self.global_head_dim or self.head_dim) if is_global else self.head_dim,
            num_kv_heads=(self.global_num_kv_heads or self.num_kv_heads) if is_global else self.num_kv_heads,
            value_is_key=self.global_value_is_key if is_global else self.value_is_key,
            shared_kv=kv_shared,
            d_ff=(self.kv_shared_d_ff or self.d_ff) if kv_shared else self.d_ff,
            dense_layers=(),
            **(_DENSE_FFN if dense else {}),
        )

    # -- derived sizes -----------------------------------------------------------------------------------------

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding (and columns of an untied output head): V rounded up to `vocab_multiple`.
        The extra rows are never read by a valid token id, and the heads slice the logits back to V."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    # -- named variants ----------------------------------------------------------------------------------------

    @classmethod
    def variant(cls, name: str, **overrides) -> ModelConfig:
        """The named architecture (see `VARIANTS`), with any field overridden."""
        if not isinstance(name, str) or name not in VARIANTS:
            message = f"Unknown ModelConfig variant {name!r}; choose one of {sorted(VARIANTS)}."
            raise (ValueError if isinstance(name, str) else TypeError)(message)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {sorted(unknown)} in overrides for {name!r}.")
        return cls(**{**VARIANTS[name], **overrides})


_GPT2 = dict(positional="learned", norm_position="pre", activation="gelu", tie_embeddings=True, dropout_rate=0.1)
_BERT = dict(
    positional="learned",
    norm_position="post",
    norm_epsilon=1e-12,
    embed_norm=True,
    activation="gelu_exact",
    type_vocab_size=2,
    tie_embeddings=True,
    dropout_rate=0.1,
)
_TRANSFORMER = dict(
    positional="sinusoidal",
    norm_position="post",
    activation="relu",
    tie_embeddings=True,
    embed_scale=True,
    dropout_rate=0.1,
    init_std=512**-0.5,
)
_GEMMA = dict(
    positional="rope",
    rope_interleaved=False,
    norm="rmsnorm",
    norm_plus_one=True,
    norm_epsilon=1e-6,
    qk_norm_epsilon=1e-6,
    sandwich_norm=True,
    embed_scale=True,
    activation="geglu",
    use_bias=False,
    tie_embeddings=True,
    dropout_rate=0.0,
    attention_scale=256**-0.5,  # query_pre_attn_scalar = 256
)
_VIT = dict(vocab_size=0, positional="learned", norm_position="pre", norm_epsilon=1e-6, activation="gelu_exact")

# Full-size variants reproduce the published parameter counts (tests/models/test_param_counts.py).
VARIANTS: dict[str, dict[str, Any]] = {
    # Radford et al. 2019: 124M (the "117M" of the paper, recounted by OpenAI's release).
    "gpt2-small": dict(vocab_size=50257, num_layers=12, d_model=768, num_heads=12, d_ff=3072, max_len=1024, **_GPT2),
    "gpt2-medium": dict(vocab_size=50257, num_layers=24, d_model=1024, num_heads=16, d_ff=4096, max_len=1024, **_GPT2),
    "gpt2-tiny": dict(vocab_size=256, num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=128, **_GPT2),
    # Devlin et al. 2019: 110M (uncased WordPiece vocabulary).
    "bert-base": dict(vocab_size=30522, num_layers=12, d_model=768, num_heads=12, d_ff=3072, max_len=512, **_BERT),
    "bert-tiny": dict(vocab_size=256, num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=128, **_BERT),
    # Vaswani et al. 2017, Table 3 "base" and "big", with a shared source/target vocabulary of 37000 tokens.
    "transformer-base": dict(
        vocab_size=37000, num_layers=6, d_model=512, num_heads=8, d_ff=2048, max_len=512, **_TRANSFORMER
    ),
    "transformer-big": dict(
        vocab_size=37000,
        num_layers=6,
        d_model=1024,
        num_heads=16,
        d_ff=4096,
        max_len=512,
        **{**_TRANSFORMER, "dropout_rate": 0.3, "init_std": 1024**-0.5},
    ),
    "transformer-tiny": dict(
        vocab_size=256,
        num_layers=2,
        d_model=64,
        num_heads=4,
        d_ff=256,
        max_len=128,
        **{**_TRANSFORMER, "init_std": 64**-0.5},
    ),
    # Dosovitskiy et al. 2021: ViT-B/16, 86M with the ImageNet-1k head.
    "vit-b16": dict(
        num_layers=12,
        d_model=768,
        num_heads=12,
        d_ff=3072,
        max_len=197,
        image_size=224,
        patch_size=16,
        num_classes=1000,
        **_VIT,
    ),
    # Gemma 2 2B (Gemma Team 2024): 2.61B; local (4096) and global layers alternate; soft-caps 50 and 30.
    "gemma2-2b": dict(
        vocab_size=256000,
        num_layers=26,
        d_model=2304,
        num_heads=8,
        num_kv_heads=4,
        head_dim=256,
        d_ff=9216,
        max_len=8192,
        sliding_window=4096,
        layer_types=("local", "global") * 13,
        attention_logit_softcap=50.0,
        final_logit_softcap=30.0,
        **_GEMMA,
    ),
    # Gemma 3 1B (Gemma Team 2025): 1.0B; 5 local layers (window 512, RoPE base 10k) per global one (1M), q/k norms.
    "gemma3-1b": dict(
        vocab_size=262144,
        num_layers=26,
        d_model=1152,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        d_ff=6912,
        max_len=32768,
        sliding_window=512,
        layer_types=tuple("global" if (i + 1) % 6 == 0 else "local" for i in range(26)),
        rope_base=1e6,
        local_rope_base=1e4,
        qk_norm=True,
        **_GEMMA,
    ),
    # Llama 3.2 1B (Meta 2024): 1.24B; GQA 32 / 8 heads, RoPE base 500k with Llama 3's scaling (factor 32 from
    # 8192 to 131072 tokens), tied embeddings. The shape for sizing (`jaxformer memory`); weights load with init_from.
    "llama3.2-1b": dict(
        vocab_size=128256,
        num_layers=16,
        d_model=2048,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        d_ff=8192,
        max_len=131072,
        positional="rope",
        rope_base=500000.0,
        rope_interleaved=False,
        rope_scaling=RopeScaling("llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0),
        norm="rmsnorm",
        norm_position="pre",
        norm_epsilon=1e-5,
        qk_norm_epsilon=1e-5,
        activation="swiglu",
        use_bias=False,
        tie_embeddings=True,
        dropout_rate=0.0,
    ),
    "vit-tiny": dict(
        num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=17, image_size=32, patch_size=8, num_classes=10, **_VIT
    ),
}
