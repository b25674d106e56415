"""ModelConfig: one frozen, hashable dataclass describes every jaxformer architecture; named variants.

    cfg = ModelConfig.variant("gpt2-small")                     # the published GPT-2 small (124M)
    cfg = ModelConfig.variant("gpt2-tiny", positional="rope")   # a named variant with overrides

Being frozen and hashable it can be a static argument of `jax.jit`. Field names follow the papers (d_model,
d_ff); `num_kv_heads < num_heads` gives grouped-query attention (1: multi-query).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxformer import ops
from jaxformer.nn.attention import IMPLEMENTATIONS
from jaxformer.nn.blocks import NORM_POSITIONS, NORMS, BlockConfig
from jaxformer.nn.remat import REMAT_POLICIES

POSITIONAL = ("learned", "sinusoidal", "rope", "alibi", "none")
ACTIVATIONS = (*ops.ACTIVATIONS, "swiglu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a GPT, BERT, encoder-decoder Transformer or ViT.

    Core: `vocab_size` (V; 0 for ViT), `num_layers` (L; the encoder's in an encoder-decoder), `d_model` (D),
    `num_heads` (N), `d_ff` (F), `max_len` (longest sequence; size of the learned position table).
    Attention: `num_kv_heads` (K, default N), `head_dim` (H, default D / N), `qk_norm`, `sliding_window`,
    `attention_impl` (auto | xla | blockwise | jax_nn | cudnn | pallas; nn/attention_dispatch.py), `rope_base`.
    Residual blocks: `norm` (layernorm | rmsnorm | batchnorm), `norm_position` (pre: x + f(norm(x)); post:
    norm(x + f(x)), the original paper and BERT), `norm_epsilon`, `activation` (relu | gelu | gelu_exact | silu |
    swiglu ...), `use_bias`, `dropout_rate` (sublayer outputs and embeddings), `attention_dropout_rate`.
    Embeddings: `positional` (learned | sinusoidal | rope | alibi | none), `tie_embeddings` (output logits use
    the input embedding), `embed_scale` (multiply token embeddings by sqrt(D), as Vaswani et al.), `embed_norm`
    (a norm after the embedding sum, as BERT), `type_vocab_size` (BERT segment embeddings; 0 = none).
    Encoder-decoder: `num_decoder_layers` (default `num_layers`). ViT: `image_size`, `patch_size`,
    `num_channels`, `num_classes`. Execution: `scan_layers` (one compiled block, scanned over L: compile time
    independent of depth), `vocab_multiple` (store the embedding / output tables with V rounded up to a multiple
    of this, e.g. 128, for fast matmuls as nanoGPT's 50304; the logits keep V columns), `remat` (none | full |
    dots | dots_no_batch: what each block's backward pass recomputes instead of storing; nn/remat.py), `dtype`
    (computation), `param_dtype` (storage), `init_std` (embeddings).
    """

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    d_ff: int
    max_len: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    num_decoder_layers: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    positional: str = "learned"
    rope_base: float = 10000.0
    sliding_window: int | None = None
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    activation: str = "gelu"
    use_bias: bool = True
    qk_norm: bool = False
    tie_embeddings: bool = True
    embed_scale: bool = False
    embed_norm: bool = False
    type_vocab_size: int = 0
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_classes: int = 0
    attention_impl: str = "xla"
    scan_layers: bool = False
    remat: str = "none"
    vocab_multiple: int = 1
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("num_layers", "d_model", "num_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int; got {value!r}.")
        if not isinstance(self.vocab_multiple, int) or self.vocab_multiple < 1:
            raise ValueError(f"ModelConfig.vocab_multiple must be a positive int; got {self.vocab_multiple!r}.")
        for name in ("vocab_size", "type_vocab_size", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ModelConfig.{name} must be an int >= 0; got {value!r}.")
        for name, value, allowed in (
            ("positional", self.positional, POSITIONAL),
            ("norm", self.norm, NORMS),
            ("norm_position", self.norm_position, NORM_POSITIONS),
            ("activation", self.activation, ACTIVATIONS),
            ("attention_impl", self.attention_impl, IMPLEMENTATIONS),
            ("remat", self.remat, REMAT_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"ModelConfig.{name}={value!r}; choose one of {allowed}.")
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={kv} "
                f"(each key/value head serves num_heads / num_kv_heads query heads); change one of them."
            )
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                f"change one of them or set head_dim explicitly."
            )
        if self.positional == "rope" and self.head_size % 2:
            raise ValueError(f"positional='rope' rotates pairs of features: head_dim={self.head_size} must be even.")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"positional='sinusoidal' needs an even d_model; got {self.d_model}.")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"ModelConfig.sliding_window must be a positive int or None; got {self.sliding_window!r}.")
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1); got {getattr(self, name)}.")
        if self.num_decoder_layers is not None and self.num_decoder_layers < 1:
            raise ValueError(f"ModelConfig.num_decoder_layers must be >= 1 or None; got {self.num_decoder_layers}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ModelConfig.image_size={self.image_size} must be a multiple of patch_size={self.patch_size}."
            )
        if self.attention_impl in ("blockwise", "pallas") and self.positional == "alibi":
            raise ValueError(
                f"attention_impl={self.attention_impl!r} takes no bias (ALiBi is one); use positional='rope' or "
                "attention_impl='xla'."
            )
        # Accept dtype names ("bfloat16") and keep the field hashable.
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))

    # -- derived sizes -----------------------------------------------------------------------------------------

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding (and columns of an untied output head): V rounded up to `vocab_multiple`.
        The extra rows are never read by a valid token id, and the heads slice the logits back to V."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_size(self) -> int:
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_config(self) -> BlockConfig:
        """The per-block slice of this config (jaxformer.nn blocks)."""
        return BlockConfig(
            dim=self.d_model,
            num_heads=self.num_heads,
            ffn_dim=self.d_ff,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            norm=self.norm,
            norm_position=self.norm_position,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            positional=self.positional if self.positional in ("rope", "alibi") else "none",
            rope_base=self.rope_base,
            sliding_window=self.sliding_window,
            qk_norm=self.qk_norm,
            use_bias=self.use_bias,
            implementation=self.attention_impl,
            norm_epsilon=self.norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    # -- named variants ----------------------------------------------------------------------------------------

    @classmethod
    def variant(cls, name: str, **overrides) -> ModelConfig:
        """The named architecture (see `VARIANTS`), with any field overridden."""
        if name not in VARIANTS:
            raise ValueError(f"Unknown ModelConfig variant {name!r}; choose one of {sorted(VARIANTS)}.")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {sorted(unknown)} in overrides for {name!r}.")
        return cls(**{**VARIANTS[name], **overrides})

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


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
    "vit-tiny": dict(
        num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=17, image_size=32, patch_size=8, num_classes=10, **_VIT
    ),
}
