"""Normalisation over the feature (last) axis, computed in float32, returned in the input's dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer.ops import _checks


def _check_param(name: str, p, dim: int):
    if p is None:
        return None
    p = _checks.check_array(name, p)
    if p.shape != (dim,):
        raise ValueError(
            f"`{name}` must have shape [D] = ({dim},) to match the last axis of x; got {_checks.shape_str(p.shape)}."
        )
    return p.astype(jnp.float32)


def layer_norm(x, scale=None, bias=None, *, epsilon: float = 1e-5) -> jax.Array:
    """Layer normalisation (Ba et al., 2016) over the last axis D:

        y = (x - mean(x)) / sqrt(var(x) + epsilon) * scale + bias

    Args:
      x: `[..., D]`.
      scale, bias: `[D]` or None (None = 1 and 0).

    Returns:
      `[..., D]` in x's dtype.
    """
    x = _checks.check_array("x", x)
    _checks.check_floating("x", x)
    dim = x.shape[-1]
    scale, bias = _check_param("scale", scale, dim), _check_param("bias", bias, dim)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    centered = xf - mean
    var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def rms_norm(x, scale=None, *, epsilon: float = 1e-6) -> jax.Array:
    """Root-mean-square normalisation (Zhang & Sennrich, 2019) over the last axis D:

        y = x / sqrt(mean(x^2) + epsilon) * scale

    Args:
      x: `[..., D]`.
      scale: `[D]` or None.

    Returns:
      `[..., D]` in x's dtype.
    """
    x = _checks.check_array("x", x)
    _checks.check_floating("x", x)
    scale = _check_param("scale", scale, x.shape[-1])
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + epsilon)
    if scale is not None:
        y = y * scale
    return y.astype(x.dtype)
