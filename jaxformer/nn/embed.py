"""Token and learned position embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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
        self.vocab_size, self.dim, self.dtype = vocab_size, dim, dtype
        init = nnx.initializers.normal(stddev=init_std)
        self.embedding = logical_param(rngs, init, (vocab_size, dim), ("vocab", "embed"), param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"Embed expects integer token ids; got dtype {ids.dtype}.")
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(f"Embed.attend expects [..., D={self.dim}]; got shape {tuple(x.shape)}.")
        return jnp.einsum("...D,VD->...V", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


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
        self.max_len, self.dtype = max_len, dtype
        init = nnx.initializers.normal(stddev=init_std)
        self.embedding = logical_param(rngs, init, (max_len, dim), (None, "embed"), param_dtype)

    def __call__(self, positions: jax.Array) -> jax.Array:
        if positions.shape[-1] > self.max_len:
            raise ValueError(f"{positions.shape[-1]} positions exceed max_len={self.max_len} of LearnedPositions.")
        # An out-of-range (traced) position reads NaN rather than being silently clipped to the last row.
        return jnp.take(self.embedding[...], positions, axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)
