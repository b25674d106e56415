"""The input side shared by the text models: token (+ position, + segment) embeddings, then norm and dropout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import checks, nn, ops
from jaxformer.models.config import ModelConfig
from jaxformer.nn.blocks import ABSOLUTE_POSITIONAL, apply_norm, make_norm


def check_tokens(name: str, tokens, vocab_size: int, max_len: int | None) -> jax.Array:
    """`tokens` must be int `[B, T]` (a TypeError for another dtype), with T <= max_len (if given) and ids in
    [0, vocab_size) when known."""
    tokens = jnp.asarray(checks.check_array(name, tokens))
    integer = jnp.issubdtype(tokens.dtype, jnp.integer)
    if tokens.ndim != 2 or not integer:
        message = f"`{name}` must be integer token ids [B, T]; got {tokens.dtype} of shape {tokens.shape}."
        raise (ValueError if integer else TypeError)(message)
    if max_len is not None and tokens.shape[1] > max_len:
        raise ValueError(
            f"`{name}` has {tokens.shape[1]} tokens but the model's position table holds max_len={max_len}; "
            "shorten the input or build the model with a larger max_len."
        )
    try:  # concrete inputs are range-checked; traced ones (under jit) cannot be
        ids = np.asarray(tokens)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return tokens
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"`{name}` ids must lie in [0, vocab_size={vocab_size}); got min {ids.min()}, max {ids.max()}."
        )
    return tokens


def check_positions(positions, shape: tuple[int, int], max_len: int | None) -> jax.Array | None:
    """`positions` (None, or int `[T]` / `[B, T]` for tokens of `shape` `[B, T]`); with an absolute position
    table of `max_len` rows, each must lie in [0, max_len) (checked when known: under jit an out-of-range position
    reads NaN)."""
    if positions is None:
        return None
    positions = checks.check_array("positions", positions)
    checks.check_integer("positions", positions)
    B, T = shape
    if positions.shape not in ((T,), (B, T)):
        raise ValueError(
            f"`positions` must be [T] = ({T},) or [B, T] = ({B}, {T}), like the tokens; got shape "
            f"{tuple(positions.shape)}."
        )
    if max_len is not None:
        checks.check_index_range("positions", positions, 0, max_len, f" (the model's max_len={max_len} positions)")
    return positions


def check_valid(name: str, valid, shape: tuple[int, ...]) -> jax.Array | None:
    """`valid` (None, or the padding mask of token ids of `shape` `[B, T]`: bool, False at padding) as an array;
    the message names the argument, the shape expected and what was received (a TypeError for another dtype)."""
    if valid is None:
        return None
    valid = jnp.asarray(checks.check_array(name, valid))
    if valid.dtype != jnp.bool_ or valid.shape != tuple(shape):
        message = (
            f"`{name}` must be bool [B, T] = {tuple(shape)}, the shape of its tokens (False at padding); "
            f"got {valid.dtype} of shape {tuple(valid.shape)}."
        )
        raise (ValueError if valid.dtype == jnp.bool_ else TypeError)(message)
    return valid


class InputEmbedding(nnx.Module):
    """x = dropout(norm(E[tokens] * s + P[positions] + T[token_types])) -> `[B, T, D]`.

    s = sqrt(D) when `embed_scale` (Vaswani et al.; rounded to the compute dtype, as Gemma), else 1. P is a
    learned table (`positional="learned"`),
    the fixed sinusoids (`"sinusoidal"`), or absent (RoPE / ALiBi act inside attention). T (segment embeddings)
    exists when `type_vocab_size > 0` (BERT). The norm exists when `embed_norm` (BERT).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size < 1:
            raise ValueError("This model embeds tokens: ModelConfig.vocab_size must be >= 1.")
        self.cfg = cfg
        kwargs = {"init_std": cfg.init_std, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.tokens = nn.Embed(cfg.padded_vocab_size, cfg.d_model, **kwargs)
        self.positions = (
            nn.LearnedPositions(cfg.max_len, cfg.d_model, **kwargs) if cfg.positional == "learned" else None
        )
        self.token_types = nn.Embed(cfg.type_vocab_size, cfg.d_model, **kwargs) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg, rngs=rngs) if cfg.embed_norm else None
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    @property
    def has_absolute_positions(self) -> bool:
        return self.cfg.positional in ABSOLUTE_POSITIONAL

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        token_types: jax.Array | None = None,
        valid: jax.Array | None = None,
    ) -> jax.Array:
        """tokens int `[B, T]`; positions int `[T]` or `[B, T]` (default `arange(T)`); token_types `[B, T]`."""
        cfg = self.cfg
        max_len = cfg.max_len if self.has_absolute_positions else None
        tokens = check_tokens("tokens", tokens, cfg.vocab_size, max_len)
        positions = check_positions(positions, tokens.shape, max_len)
        T = tokens.shape[1]
        x = self.tokens(tokens)
        if cfg.embed_scale:
            # The factor in the compute dtype, as Gemma rounds it: sqrt(3072) = 55.43 is 55.5 in bfloat16.
            x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
        if positions is None:
            positions = jnp.arange(T, dtype=jnp.int32)
        if cfg.positional == "learned":
            x = x + self.positions(positions)
        elif cfg.positional == "sinusoidal":
            table = ops.sinusoidal_positions(cfg.max_len, cfg.d_model)
            # Out-of-range (traced) positions read NaN, as for the learned table, rather than clipping silently.
            x = x + jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan).astype(cfg.dtype)
        if self.token_types is not None:
            x = x + self.token_types(jnp.zeros_like(tokens) if token_types is None else token_types)
        return self.dropout(apply_norm(self.norm, x, valid))
