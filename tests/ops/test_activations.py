"""Tests for jaxformer.ops.activations against float64 NumPy / math.erf formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.ops import activations

X = np.linspace(-6.0, 6.0, 97, dtype=np.float32)  # includes 0 and both tails


def np_gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_gelu_erf(x):
    return np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.asarray(x, np.float64)])


def np_silu(x):
    x = np.asarray(x, np.float64)
    return x / (1.0 + np.exp(-x))


def test_relu():
    np.testing.assert_array_equal(activations.relu(X), np.maximum(X, 0.0))


@pytest.mark.parametrize(("approximate", "reference"), [(True, np_gelu_tanh), (False, np_gelu_erf)])
def test_gelu(approximate, reference):
    got = activations.gelu(X, approximate=approximate)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(X), rtol=1e-5, atol=1e-6)


def test_gelu_default_is_tanh_form_and_differs_from_exact():
    np.testing.assert_allclose(activations.gelu(X), np_gelu_tanh(X), rtol=1e-5, atol=1e-6)
    assert np.abs(np_gelu_tanh(X) - np_gelu_erf(X)).max() > 1e-4  # so the two tests above can tell them apart


@pytest.mark.parametrize(("approximate", "reference"), [(True, np_gelu_tanh), (False, np_gelu_erf)])
def test_gelu_derivative_matches_float64_central_differences(approximate, reference):
    """The tanh form's hand-written derivative (a custom JVP) in reverse and forward mode, and under jit."""
    eps = 1e-6
    expected = (reference(X.astype(np.float64) + eps) - reference(X.astype(np.float64) - eps)) / (2 * eps)
    fn = lambda x: activations.gelu(x, approximate=approximate)
    # atol: in float32, 0.5 (1 + t) and the second term cancel in the tails, where t = tanh(...) is -1 to within a
    # few ulps (autodiff of jax.nn.gelu has the same ~5e-6 there, depending on XLA's tanh).
    grad = jax.jit(jax.vmap(jax.grad(fn)))(X)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
    _, tangent = jax.jvp(fn, (X,), (np.ones_like(X),))
    np.testing.assert_allclose(tangent, expected, rtol=1e-5, atol=1e-5)


def test_silu():
    np.testing.assert_allclose(activations.silu(X), np_silu(X), rtol=1e-5, atol=1e-6)


def test_swiglu():
    rng = np.random.default_rng(0)
    gate, value = rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((2, 3, 8)).astype(np.float32)
    got = activations.swiglu(gate, value)
    np.testing.assert_allclose(got, np_silu(gate) * value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(activations.swiglu)(gate, value), got, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("gate_shape", "value_shape"), [((2, 8), (2, 4)), ((2, 8), (8,)), ((1, 8), (2, 8))])
def test_swiglu_mismatched_shapes_raise(gate_shape, value_shape):
    # No silent broadcasting: the gate and the value are the two halves of one FFN projection.
    with pytest.raises(ValueError, match=r"`gate` and `value`.*\(2, 8\)"):
        activations.swiglu(np.zeros(gate_shape, np.float32), np.zeros(value_shape, np.float32))


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("relu", lambda x: np.maximum(x, 0.0)),
        ("gelu", np_gelu_tanh),
        ("gelu_exact", np_gelu_erf),
        ("silu", np_silu),
        ("tanh", np.tanh),
    ],
)
def test_get_activation(name, reference):
    fn = activations.get_activation(name)
    assert fn is activations.ACTIVATIONS[name]
    np.testing.assert_allclose(fn(X), reference(np.asarray(X, np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(X), fn(X), rtol=1e-6, atol=1e-6)


def test_get_activation_names():
    assert set(activations.ACTIVATIONS) == {"relu", "gelu", "gelu_exact", "silu", "tanh"}


@pytest.mark.parametrize("name", ["swish", "GELU", "", "swiglu"])
def test_get_activation_unknown_name_raises(name):
    with pytest.raises(ValueError, match=f"Unknown activation {name!r}"):
        activations.get_activation(name)


def test_activations_keep_bf16():
    x = jnp.asarray(X, jnp.bfloat16)
    outputs = jax.jit(lambda x: {name: fn(x) for name, fn in activations.ACTIVATIONS.items()})(x)
    for name, out in outputs.items():
        assert out.dtype == jnp.bfloat16, name
    assert activations.swiglu(x, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("fn", [activations.gelu, activations.silu, lambda x: activations.swiglu(x, x)])
def test_float_only_activations_refuse_integers(fn):
    with pytest.raises(TypeError, match=r"`(x|gate)` must have a floating dtype; got int32"):
        fn(np.arange(3, dtype=np.int32))


def test_lists_are_accepted_and_relu_keeps_integers():
    np.testing.assert_allclose(activations.gelu([1.0, -2.0]), activations.gelu(np.array([1.0, -2.0], np.float32)))
    np.testing.assert_array_equal(activations.relu([-1, 2]), [0, 2])
    with pytest.raises(TypeError, match=r"`x` must be a numeric array"):
        activations.silu("a")


@pytest.mark.parametrize("name", [["relu"], None, 3])
def test_get_activation_non_string_raises(name):
    with pytest.raises(TypeError, match=r"Unknown activation"):
        activations.get_activation(name)
