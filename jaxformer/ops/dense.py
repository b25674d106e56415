"""A weight matmul in a compute dtype with float32 accumulation: the one form every dense layer uses."""

from __future__ import annotations

import math
import string

import jax
import jax.numpy as jnp

from jaxformer import checks

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def dense(subscripts: str, x, w, *, dtype) -> jax.Array:
    """`einsum(subscripts, x, w)` with both operands in `dtype`, accumulated in float32, rounded to `dtype`:

        out = round_dtype( sum_k x[..., k] w[k, ...] )   (products and sums in float32)

    This is what a bfloat16 matmul means on GPUs, TPUs and in PyTorch, and in float32 it is the plain einsum. Asking
    XLA for the float32 result matters on CPU: `dot(bf16, bf16) -> f32` runs natively on CPUs with AVX-512 BF16 /
    AMX, where a bfloat16 result is computed as a float32 dot (BENCHMARKS.md, "bfloat16 compute on CPU").

    On CPU a half-precision product with a single row (`x` has one position: batch-1 decoding) is computed with
    `x` padded to two rows: XLA:CPU turns a one-row bfloat16 dot into a float32 one, and inside a decoding loop
    hoists the float32 copy of the weight out of the loop, so every weight of the model gets a float32 copy
    (measured: 7.2 GiB of temporaries for a 2-layer Gemma-2-2B slice at batch 1, 0.1 GiB at batch 2).

    Args:
      subscripts: an `einsum` spec with two operands, e.g. "BTD,DF->BTF" ("..." allowed).
      x, w: floating arrays; `w` is typically a parameter in its storage dtype.
      dtype: the compute dtype (of the operands and the result).
    """
    dtype = checks.check_float_dtype("dtype", dtype)
    if not isinstance(subscripts, str) or subscripts.count(",") != 1 or "->" not in subscripts:
        raise ValueError(f"`subscripts` must be an einsum spec of two operands, 'x,w->out'; got {subscripts!r}.")
    x, w = checks.check_array("x", x), checks.check_array("w", w)
    checks.check_floating("x", x)
    checks.check_floating("w", w)
    x, w = x.astype(dtype), w.astype(dtype)
    row_axes = _single_row(subscripts, x, w) if jnp.dtype(dtype) in _HALF and jax.default_backend() == "cpu" else None
    if row_axes is None:
        return jnp.einsum(subscripts, x, w, preferred_element_type=jnp.float32).astype(dtype)
    x_axis, out_axis = row_axes
    padded = jnp.concatenate([x, jnp.zeros_like(x)], axis=x_axis)
    out = jnp.einsum(subscripts, padded, w, preferred_element_type=jnp.float32)
    return jax.lax.slice_in_dim(out, 0, 1, axis=out_axis).astype(dtype)


def _single_row(subscripts: str, x, w) -> tuple[int, int] | None:
    """(axis of x, axis of the output) of x's first free axis when x's free axes hold one element in all."""
    inputs, out = subscripts.replace(" ", "").split("->")
    xs, ws = inputs.split(",")
    spare = iter(c for c in string.ascii_letters if c not in subscripts)
    if "..." in xs:
        ellipsis = "".join(next(spare) for _ in range(x.ndim - len(xs.replace("...", ""))))
        xs, out = xs.replace("...", ellipsis), out.replace("...", ellipsis)
    free = [i for i, c in enumerate(xs) if c not in ws]
    if not free or math.prod(x.shape[i] for i in free) != 1 or "..." in ws or xs[free[0]] not in out:
        return None
    return free[0], out.index(xs[free[0]])
