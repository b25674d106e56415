"""Feed-forward activations: ReLU (the paper), GELU (BERT / GPT-2) and the gated SwiGLU / GeGLU (Shazeer, 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxformer import checks

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@jax.custom_jvp
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


@_gelu_tanh.defjvp
def _gelu_tanh_jvp(primals, tangents):
    """d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(sqrt(2/pi)(x + 0.044715 x^3)).

    Written by hand so that the backward pass keeps this one derivative per element and multiplies by it, where
    autodiff of the formula keeps t and x and rebuilds the derivative in the backward pass (the CPU train step of
    shakespeare_char_cpu: 4% faster, experiments/ablate_train_cpu.py).
    """
    (x,), (dx,) = primals, tangents
    t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    y = 0.5 * x * (1.0 + t)
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return y, slope * dx


def _floating(name: str, x) -> jax.Array:
    x = checks.check_array(name, x)
    checks.check_floating(name, x)
    return x


def _gate_and_value(gate, value) -> tuple[jax.Array, jax.Array]:
    """The two inputs of a gated unit: floating arrays of one shape."""
    gate, value = _floating("gate", gate), _floating("value", value)
    if gate.shape != value.shape:
        raise ValueError(
            f"`gate` and `value` must have the same shape; got {checks.shape_str(gate.shape)} and "
            f"{checks.shape_str(value.shape)}."
        )
    return gate, value


def relu(x) -> jax.Array:
    """max(x, 0) (integer inputs stay integers)."""
    return jax.nn.relu(checks.check_array("x", x))


def gelu(x, *, approximate: bool = True) -> jax.Array:
    """GELU(x) = x * Phi(x). `approximate=True` is the tanh form used by GPT-2,
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); `approximate=False` is the exact erf form (BERT).
    x: floating."""
    x = _floating("x", x)
    return _gelu_tanh(x) if checks.check_flag("approximate", approximate) else jax.nn.gelu(x, approximate=False)


def silu(x) -> jax.Array:
    """x * sigmoid(x) (also called swish); x floating."""
    return jax.nn.silu(_floating("x", x))


def swiglu(gate, value) -> jax.Array:
    """Gated linear unit with a SiLU gate: `silu(gate) * value`, both floating `[..., F]` (the two FFN input
    projections)."""
    gate, value = _gate_and_value(gate, value)
    return jax.nn.silu(gate) * value


def geglu(gate, value) -> jax.Array:
    """Gated linear unit with a tanh-GELU gate: `gelu(gate, approximate=True) * value` (Gemma's feed-forward),
    both floating `[..., F]`."""
    gate, value = _gate_and_value(gate, value)
    return _gelu_tanh(gate) * value


# The gated activations by config name: FFN layers give them two projections (gate, value).
GATED_ACTIVATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"swiglu": swiglu, "geglu": geglu}


# Element-wise activations by config name (the gated ones are GATED_ACTIVATIONS).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu,
    "gelu": gelu,
    "gelu_exact": lambda x: gelu(x, approximate=False),
    "silu": silu,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The element-wise activation called `name` (one of ACTIVATIONS)."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        message = (
            f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)} (or one of "
            f"{sorted(GATED_ACTIVATIONS)} in a feed-forward layer)."
        )
        raise (ValueError if isinstance(name, str) else TypeError)(message)
    return ACTIVATIONS[name]
