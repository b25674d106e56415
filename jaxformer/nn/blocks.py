"""Residual Transformer blocks: an attention sublayer and a feed-forward sublayer, each wrapped in a residual.

    pre-norm  (GPT-2, most modern models):       x = x + Sublayer(Norm(x))
    post-norm (the original paper, BERT):        x = Norm(x + Sublayer(x))

Dropout is applied to each sublayer's output before the residual sum, as in the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, ops
from jaxformer.nn.attention import (
    ATTENTION_POSITIONAL,
    MultiHeadAttention,
    SharedKV,
    check_sinks_implementation,
)
from jaxformer.nn.attention_dispatch import check_implementation, check_softcap
from jaxformer.nn.feedforward import FFN_ACTIVATIONS, FeedForward
from jaxformer.nn.moe import MoEFeedForward
from jaxformer.nn.norms import BatchNorm, LayerNorm, RMSNorm
from jaxformer.nn.params import logical_param
from jaxformer.ops import RopeScaling

NORMS = ("layernorm", "rmsnorm", "batchnorm")
EXPERT_ACTIVATIONS = ("swiglu", ops.moe.GPTOSS_SWIGLU)  # a mixture's experts: SwiGLU, or GPT-OSS's clamped one
NORM_POSITIONS = ("pre", "post")
# Where position information enters: the model adds "learned" / "sinusoidal" positions to its embeddings (absolute
# positions: a sequence may not be longer than max_len); "rope" and "alibi" act inside each block's self-attention;
# "none" adds nothing.
ABSOLUTE_POSITIONAL = ("learned", "sinusoidal")
POSITIONAL = (*ABSOLUTE_POSITIONAL, *ATTENTION_POSITIONAL)

# Fields that default to None and are stored resolved: name -> what a config derives for it.
_DERIVED = {
    "num_kv_heads": lambda cfg: cfg.num_heads,
    "head_dim": lambda cfg: cfg.d_model // cfg.num_heads,
    "qkv_bias": lambda cfg: cfg.use_bias,
    "out_bias": lambda cfg: cfg.use_bias,
    "mlp_bias": lambda cfg: cfg.use_bias,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """The architecture of a residual block (jaxformer.nn); frozen and hashable. `ModelConfig` extends it with
    the model-level fields, so a model passes its config to its blocks as it is.

    Widths: `d_model` (D), `num_heads` (N), `d_ff` (F, the feed-forward's hidden width), `num_kv_heads` (K;
    None = N), `head_dim` (H; None = D / N). K and H are stored resolved: after construction they are ints.
    Attention: `qk_norm` (with `qk_norm_epsilon`), `sliding_window`, `attention_impl` (auto | xla | blockwise |
    jax_nn | cudnn | pallas; nn/attention_dispatch.py), `rope_base`, `rope_interleaved` (False: rotate halves, as
    Llama-family checkpoints), `rope_scaling` (an `ops.RopeScaling`), `attention_dropout_rate` (on the weights),
    `attention_scale` (the logit scale s in softmax(s q.k); None: 1 / sqrt(H); Gemma's query_pre_attn_scalar^-1/2),
    `attention_logit_softcap` (Gemma 2: each logit becomes `cap * tanh(s q.k / cap)` before the mask, bounding it
    to (-cap, cap); None: off), `v_norm` (an RMSNorm without scale on each value head), `value_is_key` (the layer
    has no value projection: values are the raw key projection), `shared_kv` (the layer has no key / value
    projections: it attends over an earlier layer's; see MultiHeadAttention; these three are Gemma 4's).
    Gemma 4's decoder blocks also have `per_layer_input_dim` P > 0 (after the FFN residual,
    x += norm(W_up (gelu(x W_gate) * e_l)) with the layer's own input e_l `[B, T, P]`; 0: none) and `layer_scale`
    (a learned scalar multiplying the block's output, the whole residual stream).
    Residual blocks: `norm` (layernorm | rmsnorm | batchnorm), `norm_position` (pre: x + f(norm(x)); post:
    norm(x + f(x)), the original paper and BERT), `sandwich_norm` (pre-norm with a second norm on the sublayer's
    output too, x + norm2(f(norm1(x))): Gemma 2-4), `norm_plus_one` (RMSNorms, qk-norm included, scale by 1 + w
    with w stored and initialised as 0, the sum in float32: Gemma 1-3), `norm_epsilon`, `activation` (relu |
    gelu | gelu_exact | silu | tanh | swiglu | geglu; the last two gated), `use_bias` (the default of `qkv_bias`,
    `out_bias` (attention output) and `mlp_bias`, each stored resolved; a gated FFN has no biases), `dropout_rate`
    (each sublayer's output; a model's embeddings too), `ffn_dropout_rate` (inside the feed-forward, after its
    activation).
    `positional` (learned | sinusoidal | rope | alibi | none): rope and alibi act in the blocks' self-attention;
    learned and sinusoidal positions are added by the model's embedding, so blocks see them as "none".
    Mixture of experts (`num_experts` E > 0; nn/moe.py): the feed-forward becomes a `MoEFeedForward` of E SwiGLU
    experts, each `expert_d_ff` wide (None: d_ff), `experts_per_token` k of them per token, chosen by `router`
    (softmax_topk | topk_softmax; `ops.route`) with `router_normalize` (renormalise the k weights) and
    `router_bias`; `shared_expert_d_ff` adds Qwen2-MoE's gated shared expert of that width; `capacity_factor`
    (None: dropless) switches to static expert capacity; `moe_impl` (auto | blocks | ragged_dot) picks the grouped
    matmul (`ops.moe_ffn`). `activation` stays the FFN of dense layers (ModelConfig.dense_layers). GPT-OSS's experts:
    `expert_bias` (biases on each expert's projections) and `expert_activation` "gptoss_swiglu" (its clamped
    SwiGLU, `ops.moe.gptoss_swiglu`, with `swiglu_limit` and `swiglu_alpha`; default "swiglu").
    `attention_sinks`: a learned logit per query head in each attention softmax's normaliser (GPT-OSS; ops.attention).
    `dtype` (computation; a name such as "bfloat16" is accepted), `param_dtype` (storage).

    Every field is checked here, once; a bad value raises a ValueError (a TypeError for the wrong kind of value,
    such as a string for a number) that names it and says what to choose.
    """

    d_model: int
    num_heads: int
    d_ff: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    activation: str = "gelu"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    ffn_dropout_rate: float = 0.0
    positional: str = "learned"
    rope_base: float = 10000.0
    rope_interleaved: bool = True
    rope_scaling: RopeScaling | None = None
    attention_scale: float | None = None
    attention_logit_softcap: float | None = None
    sandwich_norm: bool = False
    norm_plus_one: bool = False
    v_norm: bool = False
    value_is_key: bool = False
    shared_kv: bool = False
    layer_scale: bool = False
    per_layer_input_dim: int = 0
    sliding_window: int | None = None
    qk_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    use_bias: bool = True
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    mlp_bias: bool | None = None
    attention_impl: str = "xla"
    num_experts: int = 0
    experts_per_token: int = 2
    expert_d_ff: int | None = None
    shared_expert_d_ff: int | None = None
    router: str = "softmax_topk"
    router_normalize: bool = True
    router_bias: bool = False
    capacity_factor: float | None = None
    moe_impl: str = "auto"
    expert_bias: bool = False
    expert_activation: str = "swiglu"
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    attention_sinks: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        self._check_positive_ints("d_model", "num_heads", "d_ff")
        for name, allowed in (
            ("positional", POSITIONAL),
            ("norm", NORMS),
            ("norm_position", NORM_POSITIONS),
            ("activation", FFN_ACTIVATIONS),
        ):
            checks.check_choice(f"{owner}.{name}", getattr(self, name), allowed)
        check_implementation(self.attention_impl, f"{owner}.attention_impl")
        for name in ("qkv_bias", "out_bias", "mlp_bias"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.use_bias)
        self._check_flags(
            "rope_interleaved",
            "qk_norm",
            "use_bias",
            "qkv_bias",
            "out_bias",
            "mlp_bias",
            "sandwich_norm",
            "norm_plus_one",
            "v_norm",
            "value_is_key",
            "shared_kv",
            "layer_scale",
        )
        object.__setattr__(
            self,
            "per_layer_input_dim",
            checks.check_int(f"{owner}.per_layer_input_dim", self.per_layer_input_dim, low=0),
        )
        for name in ("attention_scale", "attention_logit_softcap"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, checks.check_positive_real(f"{owner}.{name}", getattr(self, name)))
        check_softcap(self.attention_impl, self.attention_logit_softcap, f"{owner}.attention_impl")
        if self.sandwich_norm and self.norm_position != "pre":
            raise ValueError(
                f"{owner}.sandwich_norm=True adds a norm after each sublayer of a pre-norm block; got "
                f"norm_position={self.norm_position!r}. Use norm_position='pre'."
            )
        if self.norm_plus_one and self.norm != "rmsnorm":
            raise ValueError(
                f"{owner}.norm_plus_one=True is the (1 + w) scale of Gemma's RMSNorm; got norm={self.norm!r}. "
                "Use norm='rmsnorm'."
            )
        for name in ("norm_epsilon", "qk_norm_epsilon", "rope_base"):
            checks.check_positive_real(f"{owner}.{name}", getattr(self, name))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise TypeError(f"{owner}.rope_scaling must be an ops.RopeScaling or None; got {self.rope_scaling!r}.")
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        self._check_positive_ints("num_kv_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{owner}.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads} "
                f"(each key/value head serves num_heads / num_kv_heads query heads); change one of them."
            )
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"{owner}.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                    f"change one of them or set head_dim explicitly."
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        self._check_positive_ints("head_dim")
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(f"positional='rope' rotates pairs of features: head_dim={self.head_dim} must be even.")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"positional='sinusoidal' needs an even d_model; got {self.d_model}.")
        if self.sliding_window is not None:
            self._check_positive_ints("sliding_window")
        for name in ("dropout_rate", "attention_dropout_rate", "ffn_dropout_rate"):
            checks.check_rate(f"{owner}.{name}", getattr(self, name))
        if self.attention_impl in ("blockwise", "pallas") and self.positional == "alibi":
            raise ValueError(
                f"attention_impl={self.attention_impl!r} takes no bias (ALiBi is one); use positional='rope' or "
                "attention_impl='xla'."
            )
        self._check_moe(owner)
        # Accept dtype names ("bfloat16") and keep the field hashable; computation and storage are floating.
        for name in ("dtype", "param_dtype"):
            object.__setattr__(self, name, checks.check_float_dtype(f"{owner}.{name}", getattr(self, name)))

    def _check_moe(self, owner: str) -> None:
        E = checks.check_int(f"{owner}.num_experts", self.num_experts, low=0)
        object.__setattr__(self, "num_experts", E)
        self._check_flags("router_normalize", "router_bias", "expert_bias", "attention_sinks")
        checks.check_choice(f"{owner}.router", self.router, ops.ROUTINGS)
        checks.check_choice(f"{owner}.expert_activation", self.expert_activation, EXPERT_ACTIVATIONS)
        check_sinks_implementation(self.attention_impl, self.attention_sinks)
        for name in ("swiglu_limit", "swiglu_alpha"):
            object.__setattr__(self, name, checks.check_positive_real(f"{owner}.{name}", getattr(self, name)))
        checks.check_choice(f"{owner}.moe_impl", self.moe_impl, ops.moe.IMPLEMENTATIONS)
        for name in ("expert_d_ff", "shared_expert_d_ff"):
            if getattr(self, name) is not None:
                self._check_positive_ints(name)
        if self.capacity_factor is not None:
            value = checks.check_real(f"{owner}.capacity_factor", self.capacity_factor, low=0.0, low_open=True)
            object.__setattr__(self, "capacity_factor", value)
        if E:
            k = checks.check_int(
                f"{owner}.experts_per_token", self.experts_per_token, low=1, high=E, expected=f"an int in [1, {E}]"
            )
            object.__setattr__(self, "experts_per_token", k)
        elif self.expert_d_ff is not None or self.shared_expert_d_ff is not None or self.capacity_factor is not None:
            raise ValueError(
                f"{owner}.expert_d_ff / shared_expert_d_ff / capacity_factor shape a mixture of experts; set "
                "num_experts > 0 (or leave them None)."
            )

    def _check_positive_ints(self, *names: str) -> None:
        """Each named field must be a positive int, not a bool (for subclasses' fields too); a NumPy int is
        stored as a Python int."""
        for name in names:
            value = checks.check_positive_int(f"{type(self).__name__}.{name}", getattr(self, name))
            object.__setattr__(self, name, value)

    def _check_flags(self, *names: str) -> None:
        """Each named field must be True or False (a NumPy bool is stored as a Python bool)."""
        for name in names:
            object.__setattr__(self, name, checks.check_flag(f"{type(self).__name__}.{name}", getattr(self, name)))

    def replace(self, **changes) -> Self:
        """A copy with `changes` applied (as `dataclasses.replace`), whose derived sizes follow the new widths.

        `num_kv_heads` (derived: num_heads) and `head_dim` (derived: d_model // num_heads) are stored resolved. The
        rule: a derived field that `changes` does not name is derived again from the new config when its old
        value equals what the old config derives (it was left to default, or set to that very value); any other
        value is kept. So for gpt2-tiny (d_model 64, 4 heads) `replace(d_model=128).head_dim == 32`, while a
        config built with head_dim=8 keeps 8. Name the field in `changes` to keep or set it explicitly.
        (`dataclasses.replace` itself would copy the old, now stale, derived values.)
        """
        for name, derive in _DERIVED.items():
            if name not in changes and getattr(self, name) == derive(self):
                changes[name] = None
        return dataclasses.replace(self, **changes)


def apply_norm(norm: nnx.Module | None, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """`norm(x)`, with `valid [B, T]` passed on to a BatchNorm (whose statistics skip padding); None = identity."""
    if norm is None:
        return x
    return norm(x, valid) if isinstance(norm, BatchNorm) else norm(x)


def make_norm(cfg: BlockConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    kwargs = {"epsilon": cfg.norm_epsilon, "param_dtype": cfg.param_dtype, "rngs": rngs}
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, plus_one=cfg.norm_plus_one, **kwargs)
    return {"layernorm": LayerNorm, "batchnorm": BatchNorm}[cfg.norm](cfg.d_model, **kwargs)


def make_attention(cfg: BlockConfig, *, cross: bool = False, context_dim: int | None = None, rngs: nnx.Rngs):
    return MultiHeadAttention(
        cfg.d_model,
        cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        context_dim=context_dim,
        use_bias=cfg.qkv_bias,
        out_bias=cfg.out_bias,
        qk_norm=cfg.qk_norm,
        qk_norm_epsilon=cfg.qk_norm_epsilon,
        norm_plus_one=cfg.norm_plus_one,
        scale=cfg.attention_scale,
        logit_softcap=cfg.attention_logit_softcap,
        sinks=cfg.attention_sinks and not cross,
        v_norm=cfg.v_norm and not cross,
        value_is_key=cfg.value_is_key and not cross,
        shared_kv=cfg.shared_kv and not cross,
        positional=cfg.positional if cfg.positional in ATTENTION_POSITIONAL and not cross else "none",
        rope_base=cfg.rope_base,
        rope_interleaved=cfg.rope_interleaved,
        rope_scaling=cfg.rope_scaling,
        sliding_window=None if cross else cfg.sliding_window,
        implementation=cfg.attention_impl,
        dropout_rate=cfg.attention_dropout_rate,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


def make_ffn(cfg: BlockConfig, *, rngs: nnx.Rngs) -> FeedForward | MoEFeedForward:
    """The block's feed-forward: a `FeedForward`, or with `cfg.num_experts` > 0 a `MoEFeedForward`."""
    if cfg.num_experts:
        return MoEFeedForward(
            cfg.d_model,
            cfg.expert_d_ff or cfg.d_ff,
            cfg.num_experts,
            cfg.experts_per_token,
            routing=cfg.router,
            normalize=cfg.router_normalize,
            router_bias=cfg.router_bias,
            shared_d_ff=cfg.shared_expert_d_ff,
            capacity_factor=cfg.capacity_factor,
            implementation=cfg.moe_impl,
            expert_bias=cfg.expert_bias,
            activation=cfg.expert_activation,
            swiglu_limit=cfg.swiglu_limit,
            swiglu_alpha=cfg.swiglu_alpha,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
    return FeedForward(
        cfg.d_model,
        cfg.d_ff,
        activation=cfg.activation,
        use_bias=cfg.mlp_bias,
        dropout_rate=cfg.ffn_dropout_rate,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


class _Residual(nnx.Module):
    """One sublayer with its norm, dropout and residual connection, in pre- or post-norm order; with
    `sandwich_norm` a second norm on the sublayer's output (x + norm2(f(norm(x))))."""

    def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
        self.pre_norm = cfg.norm_position == "pre"
        self.norm = make_norm(cfg, rngs=rngs)
        self.output_norm = make_norm(cfg, rngs=rngs) if cfg.sandwich_norm else None
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, sublayer, x: jax.Array, valid: jax.Array | None) -> jax.Array:
        if self.pre_norm:
            return x + self.dropout(apply_norm(self.output_norm, sublayer(apply_norm(self.norm, x, valid)), valid))
        return apply_norm(self.norm, x + self.dropout(sublayer(x)), valid)


class EncoderBlock(nnx.Module):
    """Bidirectional self-attention + feed-forward (BERT, ViT, the Transformer encoder)."""

    def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
        self.attention = make_attention(cfg, rngs=rngs)
        self.attention_residual = _Residual(cfg, rngs=rngs)
        self.ffn = make_ffn(cfg, rngs=rngs)
        self.ffn_residual = _Residual(cfg, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        valid: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """x `[B, T, D]`; mask broadcastable to `[B, N, T, T]`; valid `[B, T]` (BatchNorm statistics only);
        segment_ids int `[B, T]` (packed sequences; see MultiHeadAttention)."""
        attend = lambda h: self.attention(h, mask=mask, positions=positions, segment_ids=segment_ids)
        x = self.attention_residual(attend, x, valid)
        return self.ffn_residual(self.ffn, x, valid)


class DecoderBlock(nnx.Module):
    """Causal self-attention, optional cross-attention over an encoder's output, and feed-forward.

    GPT blocks have no cross-attention; the original Transformer's decoder blocks do (`cross_attention=True`).
    With `decode=True` the self-attention reads and extends its KV cache (`init_cache` first).

    Gemma 4 (`cfg.per_layer_input_dim` = P > 0, `cfg.layer_scale`): after the FFN residual

        x = x + norm(((gelu(x W_gate) * e) W_proj),   x = s x

    with the layer's input e `[B, T, P]` (`layer_input`), `W_gate [D, P]`, `W_proj [P, D]`, the tanh GELU and the
    scalar s (one learned number). `kv` / `return_kv` pass self-attention's `SharedKV` (Gemma 4's KV sharing).
    """

    def __init__(
        self, cfg: BlockConfig, *, cross_attention: bool = False, context_dim: int | None = None, rngs: nnx.Rngs
    ):
        self.self_attention = make_attention(cfg, rngs=rngs)
        self.self_residual = _Residual(cfg, rngs=rngs)
        if cross_attention:
            self.cross_attention = make_attention(cfg, cross=True, context_dim=context_dim, rngs=rngs)
            self.cross_residual = _Residual(cfg, rngs=rngs)
        else:
            self.cross_attention = self.cross_residual = None
        self.ffn = make_ffn(cfg, rngs=rngs)
        self.ffn_residual = _Residual(cfg, rngs=rngs)
        self.dtype = cfg.dtype
        P, D = cfg.per_layer_input_dim, cfg.d_model
        if P:
            init = nnx.initializers.lecun_normal()
            self.per_layer_gate = logical_param(rngs, init, (D, P), ("embed", None), cfg.param_dtype)
            self.per_layer_projection = logical_param(rngs, init, (P, D), (None, "embed"), cfg.param_dtype)
            self.per_layer_norm = make_norm(cfg, rngs=rngs)
        else:
            self.per_layer_gate = self.per_layer_projection = self.per_layer_norm = None
        ones = nnx.initializers.ones
        self.layer_scale = logical_param(rngs, ones, (1,), (None,), cfg.param_dtype) if cfg.layer_scale else None

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> None:
        self.self_attention.init_cache(batch_size, max_len, dtype)

    def _ffn(self, valid: jax.Array | None):
        """The feed-forward sublayer; a mixture of experts also takes `valid` (its routing statistics skip padding)."""
        if isinstance(self.ffn, MoEFeedForward):
            return lambda h: self.ffn(h, valid)
        return self.ffn

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        valid: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        decode: bool = False,
        layer_input: jax.Array | None = None,
        kv: SharedKV | None = None,
        return_kv: bool = False,
    ) -> jax.Array | tuple[jax.Array, SharedKV]:
        """x `[B, T, D]`; context `[B, S, Dc]` (needed iff the block has cross-attention); mask is ANDed with
        the causal mask; context_mask broadcastable to `[B, N, T, S]`; valid `[B, T]` (BatchNorm; with
        `decode=True` the right-padded rows' real tokens, see MultiHeadAttention); segment_ids int `[B, T]`
        (packed sequences; see MultiHeadAttention); layer_input `[B, T, P]` (iff `per_layer_input_dim` = P > 0);
        kv, return_kv: see MultiHeadAttention (with `return_kv` the block returns `(x, kv)`)."""
        if (context is None) != (self.cross_attention is None):
            raise ValueError("DecoderBlock: pass `context` exactly when the block was built with cross_attention.")
        if (layer_input is None) != (self.per_layer_gate is None):
            raise ValueError("DecoderBlock: pass `layer_input` exactly when the block has per_layer_input_dim > 0.")
        produced = []

        def self_attend(h):
            out = self.self_attention(
                h,
                mask=mask,
                is_causal=not decode,
                positions=positions,
                segment_ids=segment_ids,
                decode=decode,
                valid=valid if decode else None,
                kv=kv,
                return_kv=return_kv,
            )
            if return_kv:
                out, shared = out
                produced.append(shared)
            return out

        x = self.self_residual(self_attend, x, valid)
        if self.cross_attention is not None:
            x = self.cross_residual(lambda h: self.cross_attention(h, context, mask=context_mask), x, valid)
        x = self.ffn_residual(self._ffn(valid), x, valid)
        if layer_input is not None:
            h = ops.dense("BTD,DP->BTP", x, self.per_layer_gate[...], dtype=self.dtype)
            h = ops.gelu(h) * layer_input.astype(self.dtype)
            h = ops.dense("BTP,PD->BTD", h, self.per_layer_projection[...], dtype=self.dtype)
            x = x + apply_norm(self.per_layer_norm, h, valid)
        if self.layer_scale is not None:
            x = x * self.layer_scale[...].astype(x.dtype)
        return (x, produced[0]) if return_kv else x
