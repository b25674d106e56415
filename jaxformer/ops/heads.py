"""Reshapes between the model width D and heads: `[B, T, D] <-> [B, T, N, H]` with D = N * H."""

from __future__ import annotations

import jax

from jaxformer import checks


def split_heads(x, num_heads: int) -> jax.Array:
    """`[B, T, N * H] -> [B, T, N, H]`; head n takes features `n * H : (n + 1) * H`."""
    x = checks.check_array("x", x)
    checks.check_rank("x", x, 3, "[B, T, D]")
    num_heads = checks.check_positive_int("num_heads", num_heads)
    B, T, D = x.shape
    if D % num_heads:
        raise ValueError(
            f"The width D={D} of x (shape {checks.shape_str(x.shape)}) is not divisible by num_heads={num_heads}."
        )
    return x.reshape(B, T, num_heads, D // num_heads)


def merge_heads(x) -> jax.Array:
    """`[B, T, N, H] -> [B, T, N * H]`, the inverse of `split_heads`."""
    x = checks.check_array("x", x)
    checks.check_rank("x", x, 4, "[B, T, N, H]")
    B, T, N, H = x.shape
    return x.reshape(B, T, N * H)
