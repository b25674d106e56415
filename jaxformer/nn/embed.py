"""Token and learned position embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, ops
from jaxformer.nn.params import logical_param


class Embed(nnx.Module):
    """Token embedding table `[V, D]` (logical axes `vocab`, `embed`), initialised N(0, init_std^2).

    `embed(ids [B, T]) -> [B, T, D]`; `attend(x [B, T, D]) -> logits [B, T, V] = x E^T`, for tied output
    embeddings (GPT-2, the original Transformer). Computation is in `dtype`, parameters in `param_dtype`.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        *,
        init_std: float = 0.02,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        vocab_size, dim = checks.check_positive_int("vocab_size", vocab_size), checks.check_positive_int("dim", dim)
        init_std = checks.check_real("init_std", init_std, low=0.0)
        dtype, param_dtype = (
            checks.check_float_dtype("dtype", dtype),
            checks.check_float_dtype("param_dtype", param_dtype),
        )
        self.vocab_size, self.dim, self.dtype = vocab_size, dim, dtype
        init = nnx.initializers.normal(stddev=init_std)
        self.embedding = logical_param(rngs, init, (vocab_size, dim), ("vocab", "embed"), param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids int `[...]` in [0, V) -> `[..., D]`. An id out of range raises when the ids are known (outside
        jit); under jit it reads a row of NaN (never a clamped, valid-looking row)."""
        ids = checks.check_array("ids", ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"Embed expects integer token ids; got dtype {ids.dtype}.")
        checks.check_index_range("ids", ids, 0, self.vocab_size, " (the rows of the embedding table)")
        table = self.embedding[...]
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        x = checks.check_array("x", x)
        checks.check_floating("x", x)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"Embed.attend expects [..., D={self.dim}]; got shape {tuple(x.shape)}.")
        return ops.dense("...D,VD->...V", x, self.embedding[...], dtype=self.dtype)


class LearnedPositions(nnx.Module):
    """Learned absolute position embeddings `[max_len, D]` (BERT, GPT-2): `positions [T] or [B, T] -> [.., D]`."""

    def __init__(
        self,
        max_len: int,
        dim: int,
        *,
        init_std: float = 0.02,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        max_len, dim = checks.check_positive_int("max_len", max_len), checks.check_positive_int("dim", dim)
        init_std = checks.check_real("init_std", init_std, low=0.0)
        dtype, param_dtype = (
            checks.check_float_dtype("dtype", dtype),
            checks.check_float_dtype("param_dtype", param_dtype),
        )
        self.max_len, self.dtype = max_len, dtype
        init = nnx.initializers.normal(stddev=init_std)
        self.embedding = logical_param(rngs, init, (max_len, dim), (None, "embed"), param_dtype)

    def __call__(self, positions: jax.Array) -> jax.Array:
        """positions int `[T]` or `[B, T]`, each in [0, max_len) (checked when known; NaN rows under jit)."""
        positions = checks.check_array("positions", positions)
        checks.check_integer("positions", positions)
        if positions.ndim and positions.shape[-1] > self.max_len:
            raise ValueError(f"{positions.shape[-1]} positions exceed max_len={self.max_len} of LearnedPositions.")
        checks.check_index_range("positions", positions, 0, self.max_len, " (the rows of the position table)")
        # An out-of-range (traced) position reads NaN rather than being silently clipped to the last row.
        return jnp.take(self.embedding[...], positions, axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)
