"""Normalisation over the feature (last) axis, computed in float32, returned in the input's dtype."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxformer import checks


def _standardize_primal(xf, epsilon: float, center: bool):
    xc = xf - jnp.mean(xf, axis=-1, keepdims=True) if center else xf
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=-1, keepdims=True) + epsilon)
    return xc * rstd, rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _standardize(xf, epsilon: float, center: bool):
    """x_hat = (x - mean(x)) / sqrt(var(x) + epsilon) over the last axis (center=False: x / rms(x)), float32.

    The derivative is written by hand (as jax.nn.softmax's is): with r = 1 / sqrt(var + epsilon),

        d x_hat = r * (dc - x_hat * mean(x_hat * dc)),   dc = dx - mean(dx)   (dc = dx without centring)

    so reverse mode keeps only x_hat and r and runs the textbook LayerNorm backward: two row reductions and one
    fused element-wise pass, instead of the chain of reductions that differentiating mean / var / rsqrt gives
    (the CPU train step of shakespeare_char_cpu: 10% faster, experiments/ablate_train_cpu.py).
    """
    return _standardize_primal(xf, epsilon, center)[0]


@_standardize.defjvp
def _standardize_jvp(epsilon, center, primals, tangents):
    (xf,), (dx,) = primals, tangents
    x_hat, rstd = _standardize_primal(xf, epsilon, center)
    if center:
        dx = dx - jnp.mean(dx, axis=-1, keepdims=True)
    return x_hat, rstd * (dx - x_hat * jnp.mean(x_hat * dx, axis=-1, keepdims=True))


def _check_x(x):
    x = checks.check_array("x", x)
    checks.check_floating("x", x)
    checks.check_min_rank("x", x, 1, "[..., D]")
    return x


def _check_param(name: str, p, dim: int):
    if p is None:
        return None
    p = checks.check_array(name, p)
    if p.shape != (dim,):
        raise ValueError(
            f"`{name}` must have shape [D] = ({dim},) to match the last axis of x; got {checks.shape_str(p.shape)}."
        )
    return p.astype(jnp.float32)


def layer_norm(x, scale=None, bias=None, *, epsilon: float = 1e-5) -> jax.Array:
    """Layer normalisation (Ba et al., 2016) over the last axis D:

        y = (x - mean(x)) / sqrt(var(x) + epsilon) * scale + bias

    Args:
      x: `[..., D]`.
      scale, bias: `[D]` or None (None = 1 and 0).
      epsilon: a number > 0, added to the variance (a constant row would divide by zero without it).

    Returns:
      `[..., D]` in x's dtype.
    """
    x = _check_x(x)
    epsilon = checks.check_positive_real("epsilon", epsilon)
    dim = x.shape[-1]
    scale, bias = _check_param("scale", scale, dim), _check_param("bias", bias, dim)
    y = _standardize(x.astype(jnp.float32), epsilon, True)
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
      epsilon: a number > 0, added to the mean square.

    Returns:
      `[..., D]` in x's dtype.
    """
    x = _check_x(x)
    epsilon = checks.check_positive_real("epsilon", epsilon)
    scale = _check_param("scale", scale, x.shape[-1])
    y = _standardize(x.astype(jnp.float32), epsilon, False)
    if scale is not None:
        y = y * scale
    return y.astype(x.dtype)
