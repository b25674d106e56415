"""Tests for jaxformer.ops.classic_attention: additive (Bahdanau) and multiplicative (Luong) attention against
float64 NumPy references with explicit per-(b, n, t, s) scores."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.ops import classic_attention, dot_product_attention

B, T, S, N, Hq, Hk, Hv, A = 2, 3, 4, 2, 5, 3, 6, 7


def normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def make_inputs(seed=0, shape=(B, T, S, N, Hq, Hk, Hv, A)):
    b, t, s, n, hq, hk, hv, a = shape
    rng = np.random.default_rng(seed)
    query, key, value = normal(rng, (b, t, n, hq)), normal(rng, (b, s, n, hk)), normal(rng, (b, s, n, hv))
    w_query, w_key, v = normal(rng, (n, hq, a)), normal(rng, (n, hk, a)), normal(rng, (n, a))
    w = normal(rng, (n, hq, hk))
    return query, key, value, w_query, w_key, v, w


def np_attend(scores, value, mask):
    """Masked softmax over s of scores [B, N, T, S], then the weighted sum of value [B, S, N, Hv], in float64."""
    allowed = np.ones(scores.shape, bool) if mask is None else np.broadcast_to(mask, scores.shape)
    out = np.zeros((scores.shape[0], scores.shape[2], scores.shape[1], value.shape[-1]))  # [B, T, N, Hv]
    for b, n, t in np.ndindex(scores.shape[0], scores.shape[1], scores.shape[2]):
        keep = allowed[b, n, t]
        if not keep.any():
            continue  # nothing to attend to: zeros
        e = np.exp(scores[b, n, t, keep] - scores[b, n, t, keep].max())
        out[b, t, n] = (e / e.sum()) @ np.asarray(value, np.float64)[b, keep, n]
    return out


def np_additive(query, key, value, w_query, w_key, v, mask=None):
    q, k = np.asarray(query, np.float64), np.asarray(key, np.float64)
    b_, t_, n_, _ = q.shape
    scores = np.zeros((b_, n_, t_, k.shape[1]))
    for b, n, t, s in np.ndindex(*scores.shape):
        scores[b, n, t, s] = v[n] @ np.tanh(q[b, t, n] @ w_query[n] + k[b, s, n] @ w_key[n])
    return np_attend(scores, value, mask)


def np_multiplicative(query, key, value, w, mask=None):
    q, k = np.asarray(query, np.float64), np.asarray(key, np.float64)
    b_, t_, n_, _ = q.shape
    scores = np.zeros((b_, n_, t_, k.shape[1]))
    for b, n, t, s in np.ndindex(*scores.shape):
        scores[b, n, t, s] = q[b, t, n] @ w[n] @ k[b, s, n]
    return np_attend(scores, value, mask)


def make_mask(kind):
    rng = np.random.default_rng(1)
    return {
        "none": None,
        "causal": np.tril(np.ones((T, S), bool))[None, None],  # [1, 1, T, S]
        "per_batch_head": rng.random((B, N, T, S)) < 0.6,  # [B, N, T, S]
        "key_padding": np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)[:, None, None, :],  # [B, 1, 1, S]
        "rank2": rng.random((T, S)) < 0.7,  # [T, S]
        "rank3": rng.random((N, T, S)) < 0.6,  # [N, T, S]
    }[kind]


MASKS = ["none", "causal", "per_batch_head", "key_padding", "rank2", "rank3"]

additive = jax.jit(classic_attention.additive_attention)
multiplicative = jax.jit(classic_attention.multiplicative_attention)


@jax.jit
def both_attentions(query, key, value, w_query, w_key, v, w, mask):
    """(additive, multiplicative) in one compile."""
    return (
        classic_attention.additive_attention(query, key, value, w_query, w_key, v, mask=mask),
        classic_attention.multiplicative_attention(query, key, value, w, mask=mask),
    )


@pytest.mark.parametrize("mask_kind", MASKS)
def test_matches_reference(mask_kind):
    query, key, value, w_query, w_key, v, w = make_inputs()
    mask = make_mask(mask_kind)
    got_additive, got_multiplicative = both_attentions(query, key, value, w_query, w_key, v, w, mask)
    for got in (got_additive, got_multiplicative):
        assert got.shape == (B, T, N, Hv)
        assert got.dtype == jnp.float32
    want_additive = np_additive(query, key, value, w_query, w_key, v, mask)
    np.testing.assert_allclose(got_additive, want_additive, rtol=1e-5, atol=1e-5)
    want_multiplicative = np_multiplicative(query, key, value, w, mask)
    np.testing.assert_allclose(got_multiplicative, want_multiplicative, rtol=1e-5, atol=1e-5)


def test_eager_and_jit_agree():
    query, key, value, *_, w = make_inputs(seed=2)
    mask = make_mask("per_batch_head")
    np.testing.assert_allclose(
        classic_attention.multiplicative_attention(query, key, value, w, mask=mask),
        multiplicative(query, key, value, w, mask=mask),
        rtol=1e-5,
        atol=1e-6,
    )


def _fully_masked_row_mask():
    mask = np.ones((B, 1, T, S), bool)
    mask[1, 0, 2] = False  # query t=2 of example 1 attends to nothing
    return mask


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_fully_masked_query_row_gives_zeros_and_finite_gradients(kind):
    query, key, value, w_query, w_key, v, w = make_inputs(seed=3)
    mask = _fully_masked_row_mask()
    if kind == "additive":
        params = (w_query, w_key, v)
        fn = lambda q, k, val, params: classic_attention.additive_attention(q, k, val, *params, mask=mask)
        want = np_additive(query, key, value, w_query, w_key, v, mask)
    else:
        params = (w,)
        fn = lambda q, k, val, params: classic_attention.multiplicative_attention(q, k, val, *params, mask=mask)
        want = np_multiplicative(query, key, value, w, mask)

    @jax.jit
    def outputs_and_gradients(*args):
        all_rows = jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2, 3))(*args)
        empty_row = jax.grad(lambda *a: jnp.sum(fn(*a)[1, 2]), argnums=(0, 1, 2, 3))(*args)
        return fn(*args), all_rows, empty_row

    out, grads, empty_row_grads = outputs_and_gradients(query, key, value, params)
    np.testing.assert_array_equal(out[1, 2], 0.0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for g in jax.tree.leaves(grads):
        assert np.isfinite(g).all()
    np.testing.assert_array_equal(grads[0][1, 2], 0.0)  # the empty row's query gets no gradient
    # Through the empty row alone every gradient is exactly zero, not NaN.
    for g in jax.tree.leaves(empty_row_grads):
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("mask_shape", [(T, S), (1, T, S), (1, 1, T, S)], ids=["rank2", "rank3", "rank4"])
def test_empty_rows_of_low_rank_masks_are_zeroed_per_query(mask_shape):
    # Hv == T, so a mask-derived [.., T] factor broadcast against the feature axis instead of the query axis would
    # not raise; the result must still be zeros exactly on the empty query row and the reference elsewhere.
    shape = (B, T, S, N, Hq, Hk, T, A)
    query, key, value, w_query, w_key, v, w = make_inputs(seed=6, shape=shape)
    mask = np.ones(mask_shape, bool)
    mask[..., 1, :] = False  # query t=1 attends to nothing
    mask[..., 2, 0] = False
    got_additive, got_multiplicative = both_attentions(query, key, value, w_query, w_key, v, w, mask)
    want_additive = np_additive(query, key, value, w_query, w_key, v, mask)
    want_multiplicative = np_multiplicative(query, key, value, w, mask)
    np.testing.assert_allclose(got_additive, want_additive, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_multiplicative, want_multiplicative, rtol=1e-5, atol=1e-5)


def test_multiplicative_with_identity_is_unscaled_dot_product_attention():
    query, key, value, *_ = make_inputs(seed=4, shape=(B, T, S, N, Hk, Hk, Hv, A))
    identity = np.broadcast_to(np.eye(Hk, dtype=np.float32), (N, Hk, Hk))
    mask = make_mask("per_batch_head")
    got = multiplicative(query, key, value, identity, mask=mask)
    unscaled, scaled = jax.jit(
        lambda q, k, v, m: (dot_product_attention(q, k, v, mask=m, scale=1.0), dot_product_attention(q, k, v, mask=m))
    )(query, key, value, mask)
    np.testing.assert_allclose(got, unscaled, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, scaled, atol=1e-3), "multiplicative attention must not scale by 1 / sqrt(H)"


def test_bf16_inputs_give_bf16_output():
    query, key, value, w_query, w_key, v, w = make_inputs(seed=5)
    to16 = lambda *xs: [jnp.asarray(x, jnp.bfloat16) for x in xs]
    q16, k16, v16 = to16(query, key, value)
    got_add = additive(q16, k16, v16, *to16(w_query, w_key, v))
    got_mul = multiplicative(q16, k16, v16, *to16(w))
    assert got_add.dtype == got_mul.dtype == jnp.bfloat16
    f32 = lambda *xs: [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in xs]
    want_add = np_additive(*f32(query, key, value, w_query, w_key, v))
    want_mul = np_multiplicative(*f32(query, key, value, w))
    np.testing.assert_allclose(np.asarray(got_add, np.float32), want_add, rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(np.asarray(got_mul, np.float32), want_mul, rtol=5e-2, atol=5e-2)


@hypothesis.settings(max_examples=5)  # each new shape is a compile (~0.5 s)
@hypothesis.given(shape=st.tuples(*[st.integers(1, 3)] * 8))
def test_any_shape(shape):
    query, key, value, w_query, w_key, v, w = make_inputs(seed=sum(shape), shape=shape)
    mask = np.random.default_rng(0).random((shape[0], 1, shape[1], shape[2])) < 0.5
    got_additive, got_multiplicative = both_attentions(query, key, value, w_query, w_key, v, w, mask)
    want_additive = np_additive(query, key, value, w_query, w_key, v, mask)
    np.testing.assert_allclose(got_additive, want_additive, rtol=1e-5, atol=1e-5)
    want_multiplicative = np_multiplicative(query, key, value, w, mask)
    np.testing.assert_allclose(got_multiplicative, want_multiplicative, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("w_query", (N, Hq + 1, A)),
        ("w_query", (N, Hq, A + 1)),
        ("w_query", (Hq, A)),
        ("w_key", (N, Hk, A + 1)),
        ("w_key", (N + 1, Hk, A)),
        ("v", (N + 1, A)),
        ("v", (A,)),
    ],
)
def test_additive_wrong_weight_shape_raises(name, bad_shape):
    query, key, value, w_query, w_key, v, _ = make_inputs()
    args = dict(w_query=w_query, w_key=w_key, v=v)
    args[name] = np.zeros(bad_shape, np.float32)
    with pytest.raises(ValueError, match=f"`{name}`"):
        classic_attention.additive_attention(query, key, value, **args)


@pytest.mark.parametrize("bad_shape", [(N, Hq, Hk + 1), (N, Hk, Hq), (Hq, Hk), (N + 1, Hq, Hk)])
def test_multiplicative_wrong_weight_shape_raises(bad_shape):
    query, key, value, *_ = make_inputs()
    with pytest.raises(ValueError, match=r"`w`.*\[N, Hq, Hk\]"):
        classic_attention.multiplicative_attention(query, key, value, np.zeros(bad_shape, np.float32))


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [("query", (B, T, Hq)), ("key", (B + 1, S, N, Hk)), ("key", (B, S, N + 1, Hk)), ("value", (B, S + 1, N, Hv))],
)
def test_wrong_query_key_value_shapes_raise(name, bad_shape):
    query, key, value, *_, w = make_inputs()
    args = dict(query=query, key=key, value=value)
    args[name] = np.zeros(bad_shape, np.float32)
    with pytest.raises(ValueError, match=f"`{name}`"):
        classic_attention.multiplicative_attention(w=w, **args)


def test_mask_checks():
    query, key, value, w_query, w_key, v, w = make_inputs()
    with pytest.raises(TypeError, match="`mask`"):
        classic_attention.multiplicative_attention(query, key, value, w, mask=np.ones((T, S), np.float32))
    with pytest.raises(ValueError, match="`mask`"):
        classic_attention.additive_attention(query, key, value, w_query, w_key, v, mask=np.ones((S, T), bool))


@pytest.mark.parametrize("t, s", [(0, S), (T, 0)])
def test_empty_sequences_give_an_empty_output_or_zeros(t, s):
    """As the dense path: T = 0 gives an empty output, S = 0 (no key) zeros; never NaN."""
    query, key, value, w_query, w_key, v, w = make_inputs(shape=(B, t, s, N, Hq, Hk, Hv, A))
    for out in (
        classic_attention.additive_attention(query, key, value, w_query, w_key, v),
        classic_attention.multiplicative_attention(query, key, value, w),
    ):
        assert out.shape == (B, t, N, Hv)
        np.testing.assert_array_equal(out, np.zeros((B, t, N, Hv)))


def test_lists_are_accepted_and_integer_weights_refused():
    query, key, value, w_query, w_key, v, w = make_inputs()
    as_lists = [x.tolist() for x in (query, key, value, w_query, w_key, v)]
    np.testing.assert_allclose(
        classic_attention.additive_attention(*as_lists),
        classic_attention.additive_attention(query, key, value, w_query, w_key, v),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        classic_attention.multiplicative_attention(query.tolist(), key.tolist(), value.tolist(), w.tolist()),
        classic_attention.multiplicative_attention(query, key, value, w),
        rtol=1e-6,
    )
    with pytest.raises(TypeError, match="`w` must have a floating dtype; got int32"):
        classic_attention.multiplicative_attention(query, key, value, w.astype(np.int32))
    with pytest.raises(TypeError, match="`w_key` must have a floating dtype"):
        classic_attention.additive_attention(query, key, value, w_query, w_key.astype(np.int32), v)
