"""Normalisation layers over the feature axis D (and BatchNorm over the batch, for the LN-vs-BN experiment)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, ops
from jaxformer.nn.params import logical_param


def _check_input(name: str, x, dim: int) -> jax.Array:
    """x must be a floating array [..., D=dim]; returned as an array."""
    x = checks.check_array("x", x)
    checks.check_floating("x", x)
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"{name} expects inputs [..., D={dim}]; got shape {tuple(x.shape)}.")
    return x


def _check_args(dim: int, epsilon: float) -> tuple[int, float]:
    return checks.check_positive_int("dim", dim), checks.check_positive_real("epsilon", epsilon)


class LayerNorm(nnx.Module):
    """`ops.layer_norm` with a learned scale (init 1) and bias (init 0), both `[D]` on the `embed` axis."""

    def __init__(
        self, dim: int, *, epsilon: float = 1e-5, use_bias: bool = True, param_dtype=jnp.float32, rngs: nnx.Rngs
    ):
        dim, epsilon = _check_args(dim, epsilon)
        param_dtype = checks.check_float_dtype("param_dtype", param_dtype)
        self.dim, self.epsilon = dim, epsilon
        self.scale = logical_param(rngs, nnx.initializers.ones, (dim,), ("embed",), param_dtype)
        self.bias = logical_param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_input("LayerNorm", x, self.dim)
        bias = None if self.bias is None else self.bias[...]
        return ops.layer_norm(x, self.scale[...], bias, epsilon=self.epsilon)


class RMSNorm(nnx.Module):
    """`ops.rms_norm` with a learned scale `[D]` on logical axis `axis` (`head_dim` for qk-norm).

    `plus_one=False`: y = rms_norm(x) * w, w initialised to 1. `plus_one=True` (Gemma 1-3): the parameter is stored
    as w with y = rms_norm(x) * (1 + w), w initialised to 0; the sum 1 + w is taken in float32, so a bfloat16 w
    near 0 loses no digits of the scale near 1.
    """

    def __init__(
        self,
        dim: int,
        *,
        epsilon: float = 1e-6,
        plus_one: bool = False,
        param_dtype=jnp.float32,
        axis: str = "embed",
        rngs: nnx.Rngs,
    ):
        dim, epsilon = _check_args(dim, epsilon)
        param_dtype = checks.check_float_dtype("param_dtype", param_dtype)
        self.dim, self.epsilon = dim, epsilon
        self.plus_one = checks.check_flag("plus_one", plus_one)
        init = nnx.initializers.zeros if plus_one else nnx.initializers.ones
        self.scale = logical_param(rngs, init, (dim,), (axis,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_input("RMSNorm", x, self.dim)
        scale = self.scale[...].astype(jnp.float32)
        return ops.rms_norm(x, 1.0 + scale if self.plus_one else scale, epsilon=self.epsilon)


class BatchNorm(nnx.Module):
    """Batch normalisation of `[B, T, D]` activations over the batch and length axes, ignoring padding.

    Training (`use_running_average=False`): y = (x - mean) / sqrt(var + eps) * scale + bias, with mean and var
    taken over the valid tokens of the batch (`valid [B, T]`, all by default), and running averages updated as
    `avg <- momentum * avg + (1 - momentum) * batch_stat`. Evaluation (`model.eval()`) uses the running averages.
    Here for the LayerNorm-vs-BatchNorm experiment: its statistics couple the examples of a batch.
    """

    def __init__(
        self,
        dim: int,
        *,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        param_dtype=jnp.float32,
        use_running_average: bool = False,
        rngs: nnx.Rngs,
    ):
        dim, epsilon = _check_args(dim, epsilon)
        momentum = checks.check_real("momentum", momentum, low=0.0, high=1.0)
        param_dtype = checks.check_float_dtype("param_dtype", param_dtype)
        self.dim, self.momentum, self.epsilon = dim, momentum, epsilon
        self.use_running_average = checks.check_flag("use_running_average", use_running_average)
        self.scale = logical_param(rngs, nnx.initializers.ones, (dim,), ("embed",), param_dtype)
        self.bias = logical_param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype)
        self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        x = _check_input("BatchNorm", x, self.dim)
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            if valid is None:
                weights = jnp.ones((*x.shape[:-1], 1), jnp.float32)
            else:
                valid = checks.check_array("valid", valid)
                checks.check_bool("valid", valid, meaning="True = a real token, False = padding")
                if valid.shape != x.shape[:-1]:
                    raise ValueError(f"`valid` must have shape {tuple(x.shape[:-1])}; got {tuple(valid.shape)}.")
                weights = valid.astype(jnp.float32)[..., None]
            count = jnp.maximum(jnp.sum(weights), 1.0)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.sum(xf * weights, axis=axes) / count
            var = jnp.sum(jnp.square(xf - mean) * weights, axis=axes) / count
            self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
            self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)
