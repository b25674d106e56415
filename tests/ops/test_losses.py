"""Tests for jaxformer.ops.losses.cross_entropy against a float64 NumPy reference and its analytic gradient."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.ops import losses

B, T, V = 2, 5, 7


def make_inputs(seed=0, shape=(B, T), vocab=V):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.standard_normal((*shape, vocab))).astype(np.float32)
    labels = rng.integers(0, vocab, shape).astype(np.int32)
    weights = rng.random(shape) < 0.6
    weights.flat[0] = True  # at least one token counted
    return logits, labels, weights


def np_log_softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_target(labels, vocab, label_smoothing):
    one_hot = np.eye(vocab)[labels]
    return (1.0 - label_smoothing) * one_hot + label_smoothing / vocab


def np_cross_entropy(logits, labels, weights=None, label_smoothing=0.0):
    """Returns (mean loss, count, d mean / d logits) in float64."""
    log_p = np_log_softmax(logits)
    target = np_target(labels, log_p.shape[-1], label_smoothing)
    per_token = -(target * log_p).sum(-1)
    weights = np.ones(labels.shape) if weights is None else np.asarray(weights, np.float64)
    count = weights.sum()
    mean = (per_token * weights).sum() / count if count > 0 else 0.0
    grad = weights[..., None] * (np.exp(log_p) - target) / max(count, 1e-8)
    return mean, count, grad


def loss_and_grad(logits, labels, **kwargs):
    fn = functools.partial(losses.cross_entropy, **kwargs)
    (mean, count), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(logits, labels)
    return mean, count, grad


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_loss_and_gradient_match_reference(use_weights, label_smoothing):
    logits, labels, weights = make_inputs()
    weights = weights if use_weights else None
    mean, count, grad = loss_and_grad(logits, labels, weights=weights, label_smoothing=label_smoothing)
    want_mean, want_count, want_grad = np_cross_entropy(logits, labels, weights, label_smoothing)
    assert mean.shape == count.shape == ()
    assert mean.dtype == count.dtype == jnp.float32
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    assert count == want_count == (B * T if weights is None else weights.sum())
    # d mean / d logits = weight * (softmax - target) / count
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    if weights is not None:
        assert not np.asarray(grad)[~weights].any(), "tokens of weight 0 must get zero gradient"


def test_eager_and_jit_agree():
    logits, labels, weights = make_inputs(seed=2)
    eager = losses.cross_entropy(logits, labels, weights=weights, label_smoothing=0.1)
    jitted = jax.jit(functools.partial(losses.cross_entropy, label_smoothing=0.1))(logits, labels, weights=weights)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_perfect_prediction_has_near_zero_loss_and_uniform_logits_give_log_v():
    labels = np.array([[0, 3, 6]], np.int32)
    confident = 100.0 * np.eye(V, dtype=np.float32)[labels]
    assert losses.cross_entropy(confident, labels)[0] < 1e-6
    np.testing.assert_allclose(losses.cross_entropy(np.zeros((1, 3, V), np.float32), labels)[0], np.log(V), rtol=1e-6)


def test_all_zero_weights_give_zero_loss_zero_count_and_finite_gradients():
    logits, labels, _ = make_inputs(seed=3)
    mean, count, grad = loss_and_grad(logits, labels, weights=np.zeros((B, T), bool), label_smoothing=0.1)
    assert mean == 0.0
    assert count == 0.0
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad, 0.0)


def test_ignored_tokens_may_hold_out_of_range_labels():
    """Tokens of weight 0 may carry an "ignore" label such as -100 (or V) without producing NaN."""
    logits, labels, weights = make_inputs(seed=4)
    ignored = np.where(weights, labels, -100).astype(np.int32)
    ignored[~weights & (np.arange(T) % 2 == 0)] = V
    mean, count, grad = loss_and_grad(logits, ignored, weights=weights, label_smoothing=0.1)
    want_mean, want_count, want_grad = np_cross_entropy(logits, labels, weights, 0.1)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
    assert count == want_count
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_float_weights_weight_tokens():
    logits, labels, _ = make_inputs(seed=4)
    for total in (5.0, 0.25):  # a weighted mean, also when the weights sum to less than one token
        weights = np.random.default_rng(4).random((B, T)).astype(np.float32)
        weights *= total / weights.sum()
        mean, count = losses.cross_entropy(logits, labels, weights=weights)
        want_mean, want_count, _ = np_cross_entropy(logits, labels, weights)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
        np.testing.assert_allclose(count, want_count, rtol=1e-6)


def test_bf16_logits_are_computed_in_float32():
    logits, labels, weights = make_inputs(seed=5, vocab=50)
    logits16 = jnp.asarray(logits, jnp.bfloat16)
    mean, count = jax.jit(losses.cross_entropy)(logits16, labels, weights=weights)
    assert mean.dtype == count.dtype == jnp.float32
    # The reference sees exactly the bf16-rounded logits: any bf16 arithmetic inside would be off by ~1e-2.
    want_mean, _, _ = np_cross_entropy(np.asarray(logits16.astype(jnp.float32)), labels, weights)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)


@hypothesis.settings(max_examples=6)  # each new shape is a compile (~0.3 s)
@hypothesis.given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    vocab=st.integers(2, 9),
    label_smoothing=st.sampled_from([0.0, 0.3]),
)
def test_any_shape(shape, vocab, label_smoothing):
    logits, labels, weights = make_inputs(seed=len(shape) + vocab, shape=tuple(shape), vocab=vocab)
    mean, count, grad = loss_and_grad(logits, labels, weights=weights, label_smoothing=label_smoothing)
    want_mean, want_count, want_grad = np_cross_entropy(logits, labels, weights, label_smoothing)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    assert count == want_count
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label_shape", [(B,), (B, T, 1), (T, B), (B, T + 1)])
def test_wrong_label_shape_raises(label_shape):
    logits, _, _ = make_inputs()
    with pytest.raises(ValueError, match=r"`labels`.*\(2, 5\)"):
        losses.cross_entropy(logits, np.zeros(label_shape, np.int32))


def test_float_labels_raise():
    logits, labels, _ = make_inputs()
    with pytest.raises(TypeError, match="labels"):
        losses.cross_entropy(logits, labels.astype(np.float32))


def test_integer_logits_raise():
    _, labels, _ = make_inputs()
    with pytest.raises(TypeError, match="logits"):
        losses.cross_entropy(np.zeros((B, T, V), np.int32), labels)


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.0, 1.5])
def test_label_smoothing_out_of_range_raises(label_smoothing):
    logits, labels, _ = make_inputs()
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def test_wrong_weights_shape_raises():
    logits, labels, _ = make_inputs()
    with pytest.raises(ValueError, match="`weights`"):
        losses.cross_entropy(logits, labels, weights=np.ones((B, T, 1), bool))


@pytest.mark.parametrize("bad_label", [V, V + 3, -1, -100])
def test_counted_labels_out_of_range_raise_and_name_the_weights(bad_label):
    logits, labels, _ = make_inputs()
    labels = labels.copy()
    labels[1, 2] = bad_label
    with pytest.raises(ValueError, match=rf"`labels` must lie in \[0, {V}\) where the weights count .*{bad_label} at"):
        losses.cross_entropy(logits, labels)
    weights = np.ones((B, T), bool)
    with pytest.raises(ValueError, match="`labels` must lie in"):
        losses.cross_entropy(logits, labels, weights=weights)
    weights[1, 2] = False  # the documented way to ignore a position
    mean, count = losses.cross_entropy(logits, labels, weights=weights)
    assert np.isfinite(mean) and count == B * T - 1


def test_counted_labels_out_of_range_under_jit_give_nan():
    """Traced labels cannot be checked: the loss is NaN (never a silently clamped class)."""
    logits, labels, _ = make_inputs()
    labels = labels.copy()
    labels[0, 0] = V
    mean, _ = jax.jit(losses.cross_entropy)(logits, labels)
    assert np.isnan(mean)


def test_degenerate_logits_and_weights_raise():
    logits, labels, _ = make_inputs()
    with pytest.raises(ValueError, match=r"`logits` must have at least one class \(V >= 1\)"):
        losses.cross_entropy(np.zeros((B, T, 0), np.float32), labels)
    with pytest.raises(ValueError, match=r"`logits` must have rank >= 1"):
        losses.cross_entropy(np.float32(1.0), np.int32(0))
    with pytest.raises(ValueError, match=r"`weights` must be >= 0; got -1.0"):
        losses.cross_entropy(logits, labels, weights=-np.ones((B, T), np.float32))
    with pytest.raises(TypeError, match=r"`label_smoothing` must be a real number"):
        losses.cross_entropy(logits, labels, label_smoothing="0.1")
    with pytest.raises(TypeError, match=r"`weights` must be a numeric array"):
        losses.cross_entropy(logits, labels, weights=np.full((B, T), "a"))


def test_lists_are_accepted():
    logits, labels, weights = make_inputs()
    got = losses.cross_entropy(logits.tolist(), labels.tolist(), weights=weights.tolist())
    np.testing.assert_allclose(got, losses.cross_entropy(logits, labels, weights=weights), rtol=1e-6)
