"""Residual Transformer blocks: an attention sublayer and a feed-forward sublayer, each wrapped in a residual.

    pre-norm  (GPT-2, most modern models):       x = x + Sublayer(Norm(x))
    post-norm (the original paper, BERT):        x = Norm(x + Sublayer(x))

Dropout is applied to each sublayer's output before the residual sum, as in the paper.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer.nn.attention import IMPLEMENTATIONS, POSITIONAL, MultiHeadAttention
from jaxformer.nn.feedforward import FeedForward
from jaxformer.nn.norms import BatchNorm, LayerNorm, RMSNorm

NORMS = ("layernorm", "rmsnorm", "batchnorm")
NORM_POSITIONS = ("pre", "post")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Everything a block needs; frozen and hashable (models build it from their ModelConfig)."""

    dim: int
    num_heads: int
    ffn_dim: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    norm: str = "layernorm"
    norm_position: str = "pre"
    activation: str = "gelu"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    positional: str = "none"
    rope_base: float = 10000.0
    sliding_window: int | None = None
    qk_norm: bool = False
    use_bias: bool = True
    implementation: str = "xla"
    norm_epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        for name, value, allowed in (
            ("norm", self.norm, NORMS),
            ("norm_position", self.norm_position, NORM_POSITIONS),
            ("positional", self.positional, POSITIONAL),
            ("implementation", self.implementation, IMPLEMENTATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"BlockConfig.{name}={value!r}; choose one of {allowed}.")
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BlockConfig.{name} must be in [0, 1); got {getattr(self, name)}.")


def apply_norm(norm: nnx.Module | None, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """`norm(x)`, with `valid [B, T]` passed on to a BatchNorm (whose statistics skip padding); None = identity."""
    if norm is None:
        return x
    return norm(x, valid) if isinstance(norm, BatchNorm) else norm(x)


def make_norm(cfg: BlockConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    kwargs = {"epsilon": cfg.norm_epsilon, "param_dtype": cfg.param_dtype, "rngs": rngs}
    return {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "batchnorm": BatchNorm}[cfg.norm](cfg.dim, **kwargs)


def make_attention(cfg: BlockConfig, *, cross: bool = False, context_dim: int | None = None, rngs: nnx.Rngs):
    return MultiHeadAttention(
        cfg.dim,
        cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        context_dim=context_dim,
        use_bias=cfg.use_bias,
        qk_norm=cfg.qk_norm,
        positional="none" if cross else cfg.positional,
        rope_base=cfg.rope_base,
        sliding_window=None if cross else cfg.sliding_window,
        implementation=cfg.implementation,
        dropout_rate=cfg.attention_dropout_rate,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


def make_ffn(cfg: BlockConfig, *, rngs: nnx.Rngs) -> FeedForward:
    return FeedForward(
        cfg.dim,
        cfg.ffn_dim,
        activation=cfg.activation,
        use_bias=cfg.use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


class _Residual(nnx.Module):
    """One sublayer with its norm, dropout and residual connection, in pre- or post-norm order."""

    def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
        self.pre_norm = cfg.norm_position == "pre"
        self.norm = make_norm(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, sublayer, x: jax.Array, valid: jax.Array | None) -> jax.Array:
        if self.pre_norm:
            return x + self.dropout(sublayer(apply_norm(self.norm, x, valid)))
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

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> None:
        self.self_attention.init_cache(batch_size, max_len, dtype)

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
    ) -> jax.Array:
        """x `[B, T, D]`; context `[B, S, Dc]` (needed iff the block has cross-attention); mask is ANDed with
        the causal mask; context_mask broadcastable to `[B, N, T, S]`; valid `[B, T]` (BatchNorm only);
        segment_ids int `[B, T]` (packed sequences; see MultiHeadAttention)."""
        if (context is None) != (self.cross_attention is None):
            raise ValueError("DecoderBlock: pass `context` exactly when the block was built with cross_attention.")

        def self_attend(h):
            return self.self_attention(
                h, mask=mask, is_causal=not decode, positions=positions, segment_ids=segment_ids, decode=decode
            )

        x = self.self_residual(self_attend, x, valid)
        if self.cross_attention is not None:
            x = self.cross_residual(lambda h: self.cross_attention(h, context, mask=context_mask), x, valid)
        return self.ffn_residual(self.ffn, x, valid)
