"""Tests for jaxformer.ops.norms: layer_norm and rms_norm against float64 NumPy references."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.ops import norms


def normal(seed, shape, dtype=np.float32, loc=0.0, std=1.0):
    return (loc + std * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def np_layer_norm(x, scale=None, bias=None, epsilon=1e-5):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def np_rms_norm(x, scale=None, epsilon=1e-6):
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x**2).mean(-1, keepdims=True) + epsilon)
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    return y


@pytest.mark.parametrize("shape", [(8,), (2, 3, 16)])
@pytest.mark.parametrize(("with_scale", "with_bias"), [(False, False), (True, False), (False, True), (True, True)])
def test_layer_norm_matches_reference(shape, with_scale, with_bias):
    D = shape[-1]
    x = normal(0, shape, loc=3.0, std=2.0)  # a non-zero mean and non-unit variance to remove
    scale = normal(1, (D,)) if with_scale else None
    bias = normal(2, (D,)) if with_bias else None
    got = jax.jit(norms.layer_norm)(x, scale, bias)
    assert got.shape == shape
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_layer_norm(x, scale, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(8,), (2, 3, 16)])
@pytest.mark.parametrize("with_scale", [False, True])
def test_rms_norm_matches_reference(shape, with_scale):
    x = normal(0, shape, loc=1.0, std=2.0)
    scale = normal(1, (shape[-1],)) if with_scale else None
    got = jax.jit(norms.rms_norm)(x, scale)
    assert got.shape == shape
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_rms_norm(x, scale), rtol=1e-5, atol=1e-5)


def test_epsilon_is_used():
    x = normal(0, (3, 4), std=0.01)  # variance 1e-4: epsilon = 1e-2 matters
    np.testing.assert_allclose(
        jax.jit(functools.partial(norms.layer_norm, epsilon=1e-2))(x), np_layer_norm(x, epsilon=1e-2), rtol=1e-5
    )
    np.testing.assert_allclose(
        jax.jit(functools.partial(norms.rms_norm, epsilon=1e-2))(x), np_rms_norm(x, epsilon=1e-2), rtol=1e-5
    )


def test_constant_rows_give_finite_output():
    x = np.full((2, 8), 5.0, np.float32)
    np.testing.assert_array_equal(norms.layer_norm(x), np.zeros_like(x))
    np.testing.assert_array_equal(norms.rms_norm(np.zeros_like(x)), np.zeros_like(x))


def test_eager_and_jit_agree():
    x, scale, bias = normal(0, (2, 3, 8)), normal(1, (8,)), normal(2, (8,))
    np.testing.assert_allclose(norms.layer_norm(x, scale, bias), jax.jit(norms.layer_norm)(x, scale, bias), rtol=1e-6)
    np.testing.assert_allclose(norms.rms_norm(x, scale), jax.jit(norms.rms_norm)(x, scale), rtol=1e-6)


@pytest.mark.parametrize(
    "norm", [functools.partial(norms.layer_norm, bias=np.linspace(-1, 1, 32)), norms.rms_norm], ids=["layer", "rms"]
)
def test_bf16_in_bf16_out_close_to_f32(norm):
    x32 = normal(0, (4, 32), loc=2.0, std=3.0)
    x16 = jnp.asarray(x32, jnp.bfloat16)
    scale = normal(1, (32,))
    got = jax.jit(norm)(x16, scale)
    assert got.dtype == jnp.bfloat16
    want = jax.jit(norm)(x16.astype(jnp.float32), scale)  # same rounded input, computed and returned in float32
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)


@jax.jit
def _both_norms(x, scale):
    return norms.layer_norm(x, scale), norms.rms_norm(x, scale)


@hypothesis.settings(max_examples=10)  # each new shape is a compile
@hypothesis.given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), with_scale=st.booleans())
def test_norms_any_shape(shape, with_scale):
    shape = (*shape[:-1], shape[-1] + 1)  # D >= 2, so the variance is not identically 0
    x = normal(len(shape), shape, std=2.0)
    scale = normal(7, (shape[-1],)) if with_scale else None
    layer, rms = _both_norms(x, scale)
    np.testing.assert_allclose(layer, np_layer_norm(x, scale), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rms, np_rms_norm(x, scale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad_shape", [(7,), (1, 8), ()])
def test_wrong_scale_shape_raises(bad_shape):
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="`scale`"):
        norms.layer_norm(x, np.ones(bad_shape, np.float32))
    with pytest.raises(ValueError, match="`scale`"):
        norms.rms_norm(x, np.ones(bad_shape, np.float32))


def test_layer_norm_wrong_bias_shape_raises():
    with pytest.raises(ValueError, match="`bias`"):
        norms.layer_norm(np.zeros((2, 8), np.float32), None, np.zeros((4,), np.float32))


@pytest.mark.parametrize("norm", [norms.layer_norm, norms.rms_norm])
def test_integer_x_raises(norm):
    with pytest.raises(TypeError, match="`x`"):
        norm(np.ones((2, 4), np.int32))


def numerical_grad(f, x, eps=1e-6):
    """Central differences of a float64 NumPy scalar function."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_gradients_match_float64_finite_differences(norm):
    """The hand-written derivative (ops/norms.py) against central differences of the float64 reference, for the
    input, the scale and the bias, with a random cotangent."""
    x, scale, bias = normal(0, (2, 3, 16)), normal(1, (16,), loc=1.0), normal(2, (16,))
    w = normal(3, (2, 3, 16))
    if norm == "layer_norm":
        ours = lambda x, s, b: jnp.sum(norms.layer_norm(x, s, b) * w)
        ref = lambda x, s, b: float(np.sum(np_layer_norm(x, s, b) * w))
    else:
        ours = lambda x, s, b: jnp.sum(norms.rms_norm(x, s) * w) + 0.0 * jnp.sum(b)
        ref = lambda x, s, b: float(np.sum(np_rms_norm(x, s) * w))
    grads = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(x, scale, bias)
    expected = (
        numerical_grad(lambda v: ref(v, scale, bias), x),
        numerical_grad(lambda v: ref(x, v, bias), scale),
        numerical_grad(lambda v: ref(x, scale, v), bias),
    )
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_forward_mode_and_second_derivatives_work(norm):
    """The custom JVP serves jax.jvp and nested differentiation too, not only jax.grad."""
    fn = getattr(norms, norm)
    x, v = normal(4, (3, 8)), normal(5, (3, 8))
    ref = np_layer_norm if norm == "layer_norm" else np_rms_norm
    eps = 1e-6
    expected = (ref(x.astype(np.float64) + eps * v) - ref(x.astype(np.float64) - eps * v)) / (2 * eps)
    _, tangent = jax.jvp(fn, (x,), (v,))
    np.testing.assert_allclose(tangent, expected, rtol=1e-4, atol=1e-5)
    hvp = jax.grad(lambda x: jnp.vdot(jax.grad(lambda y: jnp.sum(fn(y) ** 3))(x), v))(x)
    assert np.all(np.isfinite(hvp)) and np.any(hvp != 0)


@pytest.mark.parametrize("norm", [norms.layer_norm, norms.rms_norm])
@pytest.mark.parametrize("epsilon", [0.0, -1e-5, float("nan"), float("inf")])
def test_epsilon_must_be_a_finite_positive_number(norm, epsilon):
    """epsilon = 0 would divide a constant row by zero (NaN); a negative one takes the root of a negative."""
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number > 0"):
        norm(np.ones((2, 8), np.float32), epsilon=epsilon)
    with pytest.raises(TypeError, match=r"`epsilon` must be a real number; got '1e-5'"):
        norm(np.ones((2, 8), np.float32), epsilon="1e-5")


@pytest.mark.parametrize("norm", [norms.layer_norm, norms.rms_norm])
def test_scalar_x_raises_and_lists_are_accepted(norm):
    with pytest.raises(ValueError, match=r"`x` must have rank >= 1 with layout \[..., D\]"):
        norm(np.float32(1.0))
    x = normal(0, (2, 8))
    np.testing.assert_allclose(norm(x.tolist()), norm(x), rtol=1e-6)
