"""dot_product_attention and attention_weights against a float64 NumPy reference, jax.nn, and their properties."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import ops
from tests.ops import reference

# (B, T, S, N, K, H, Hv): MHA, GQA, MQA, single head, cross-attention with T != S and Hv != H.
SHAPES = {
    "mha": (2, 5, 5, 4, 4, 8, 8),
    "gqa": (2, 6, 6, 6, 2, 4, 4),
    "mqa": (1, 4, 4, 3, 1, 8, 8),
    "single_head": (3, 7, 7, 1, 1, 16, 16),
    "cross": (2, 3, 9, 4, 2, 8, 5),
}


def make_qkv(B, T, S, N, K, H, Hv, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, N, H)).astype(dtype)
    k = rng.normal(size=(B, S, K, H)).astype(dtype)
    v = rng.normal(size=(B, S, K, Hv)).astype(dtype)
    return q, k, v


def random_mask(shape, seed=1, p=0.7):
    return np.random.default_rng(seed).random(shape) < p


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_matches_reference_with_mask_and_bias(shape, use_jit):
    B, T, S, N, K, H, Hv = shape
    q, k, v = make_qkv(*shape)
    mask = random_mask((B, N, T, S))
    bias = np.random.default_rng(2).normal(size=(1, N, T, S)).astype(np.float32)
    fn = jax.jit(ops.dot_product_attention) if use_jit else ops.dot_product_attention
    for kwargs in ({}, {"mask": mask}, {"bias": bias}, {"mask": mask, "bias": bias, "scale": 0.3}):
        got = fn(q, k, v, **kwargs)
        want = reference.attention(q, k, v, **kwargs)
        assert got.shape == (B, T, N, Hv) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(list(kwargs)))


@pytest.mark.parametrize("shape", [SHAPES["mha"], SHAPES["gqa"], SHAPES["cross"]], ids=["mha", "gqa", "cross"])
def test_is_causal_is_top_left_causal_mask_and_combines_with_mask(shape):
    B, T, S, N, K, H, Hv = shape
    q, k, v = make_qkv(*shape)
    mask = random_mask((B, 1, T, S))
    got = ops.dot_product_attention(q, k, v, mask=mask, is_causal=True)
    want = reference.attention(q, k, v, mask=mask & reference.causal(T, S))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [SHAPES["mha"], SHAPES["gqa"], SHAPES["mqa"]], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("case", ["plain", "mask", "bias", "causal"])
def test_equals_jax_nn_dot_product_attention(shape, case):
    B, T, S, N, K, H, Hv = shape
    q, k, v = make_qkv(*shape, seed=3)
    kwargs = {
        "plain": {},
        "mask": {"mask": random_mask((B, N, T, S), p=0.8) | np.eye(T, S, dtype=bool)},  # no empty rows
        "bias": {"bias": np.random.default_rng(4).normal(size=(B, N, T, S)).astype(np.float32)},
        "causal": {"is_causal": True},
    }[case]
    got = ops.dot_product_attention(q, k, v, **kwargs)
    want = jax.nn.dot_product_attention(q, k, v, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_weights_are_the_reference_probabilities():
    B, T, S, N, K, H, _ = SHAPES["gqa"]
    q, k, _ = make_qkv(*SHAPES["gqa"])
    mask = random_mask((B, 1, T, S))
    mask[0, 0, 2] = False  # an empty row
    got = ops.attention_weights(q, k, mask=mask, is_causal=True)
    want = reference.attention_probs(q, k, mask=mask & reference.causal(T, S))
    assert got.shape == (B, N, T, S) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    row_sums = np.asarray(got).sum(-1)
    has_keys = np.broadcast_to(mask & reference.causal(T, S), got.shape).any(-1)
    np.testing.assert_allclose(row_sums, has_keys.astype(np.float32), atol=1e-5)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = make_qkv(*SHAPES["mha"])
    H = q.shape[-1]
    np.testing.assert_allclose(
        ops.dot_product_attention(q, k, v),
        ops.dot_product_attention(q, k, v, scale=1 / np.sqrt(H)),
        rtol=1e-6,
        atol=1e-6,
    )
    assert not np.allclose(ops.dot_product_attention(q, k, v), ops.dot_product_attention(q, k, v, scale=1.0))


def test_causality_via_gradients():
    """Output position t must not depend on any input at a later position."""
    B, T, S, N, K, H, Hv = SHAPES["gqa"]
    q, k, v = make_qkv(*SHAPES["gqa"])
    for t in range(T):

        def out_t(q, k, v, t=t):
            return ops.dot_product_attention(q, k, v, is_causal=True)[:, t].sum()

        dq, dk, dv = jax.grad(out_t, argnums=(0, 1, 2))(q, k, v)
        for name, grad in (("dk", dk), ("dv", dv)):
            assert np.all(np.asarray(grad)[:, t + 1 :] == 0), f"{name} leaks future positions into output {t}"
        assert np.all(np.abs(np.asarray(dv)[:, : t + 1]).sum(axis=(2, 3)) > 0)  # every visible value matters
        if t > 0:  # with one visible key the softmax is constant, so dk is zero at t = 0
            assert np.all(np.abs(np.asarray(dk)[:, : t + 1]).sum(axis=(2, 3)) > 0)
        assert np.all(np.asarray(dq)[:, np.arange(T) != t] == 0)


def test_padding_invariance():
    """Changing keys and values at padded positions changes nothing at the valid positions."""
    B, T, S, N, K, H, Hv = SHAPES["cross"]
    q, k, v = make_qkv(*SHAPES["cross"])
    kv_valid = ops.lengths_to_valid(jnp.array([4, 9]), S)
    q_valid = ops.lengths_to_valid(jnp.array([3, 2]), T)
    mask = ops.padding_mask(q_valid, kv_valid)
    out = ops.dot_product_attention(q, k, v, mask=mask)
    rng = np.random.default_rng(7)
    pad = ~np.asarray(kv_valid)[:, :, None, None]
    k2 = np.where(pad, rng.normal(size=k.shape) * 100, k).astype(np.float32)
    v2 = np.where(pad, rng.normal(size=v.shape) * 100, v).astype(np.float32)
    out2 = ops.dot_product_attention(q, k2, v2, mask=mask)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    # Padded query rows see nothing: exactly zero.
    assert np.all(np.asarray(out)[~np.asarray(q_valid)] == 0)


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    B, T, S, N, K, H, Hv = SHAPES["gqa"]
    q, k, v = make_qkv(*SHAPES["gqa"])
    mask = random_mask((B, N, T, S))
    mask[:, :, 1] = False  # row 1 of every head attends to nothing
    mask[0, 2] = False  # and one whole head of one example
    bias = np.full((1, 1, T, S), -1e9, np.float32)  # large biases must not make NaN either

    def loss(q, k, v, bias):
        return jnp.sum(jnp.sin(ops.dot_product_attention(q, k, v, mask=mask, bias=bias)))

    out = ops.dot_product_attention(q, k, v, mask=mask, bias=bias)
    assert np.all(np.asarray(out)[:, 1] == 0)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0])[:, 1] == 0)


def test_minus_infinity_bias_does_not_make_nan():
    """-inf in a bias excludes a key like a mask does; a row of -inf gives finite values and gradients."""
    B, T, S, N, K, H, Hv = SHAPES["mha"]
    q, k, v = make_qkv(*SHAPES["mha"])
    bias = np.zeros((1, 1, T, S), np.float32)
    bias[..., 1:3] = -np.inf  # keys 1 and 2 excluded for every query
    bias[..., 4, :] = -np.inf  # query 4 excludes everything
    out = ops.dot_product_attention(q, k, v, bias=bias)
    keep = np.isfinite(bias)
    np.testing.assert_allclose(np.asarray(out)[:, :4], reference.attention(q, k, v, mask=keep)[:, :4], atol=1e-5)
    grads = jax.grad(lambda q, k, v: jnp.sum(ops.dot_product_attention(q, k, v, bias=bias) ** 2), (0, 1, 2))(q, k, v)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_gradients_match_float64_finite_differences_of_reference():
    q, k, v = make_qkv(*SHAPES["gqa"], seed=5)
    mask = random_mask((1, 1, q.shape[1], k.shape[1]))
    mask[..., 0] = True
    cot = np.random.default_rng(9).normal(size=(q.shape[0], q.shape[1], q.shape[2], v.shape[-1]))

    def loss_np(q, k, v):
        return np.sum(reference.attention(q, k, v, mask=mask) * cot)

    grads = jax.grad(
        lambda q, k, v: jnp.sum(ops.dot_product_attention(q, k, v, mask=mask) * cot.astype(np.float32)),
        argnums=(0, 1, 2),
    )(q, k, v)
    eps = 1e-6
    rng = np.random.default_rng(11)
    for arg_index, grad in enumerate(grads):
        args = [np.asarray(a, np.float64) for a in (q, k, v)]
        for _ in range(5):
            idx = tuple(rng.integers(0, d) for d in args[arg_index].shape)
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[arg_index][idx] += eps
            minus[arg_index][idx] -= eps
            numeric = (loss_np(*plus) - loss_np(*minus)) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grad)[idx], numeric, rtol=1e-3, atol=1e-4)


def test_bfloat16_keeps_dtype_and_uses_float32_softmax():
    q, k, v = make_qkv(*SHAPES["mha"])
    qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out = ops.dot_product_attention(qb, kb, vb, is_causal=True)
    assert out.dtype == jnp.bfloat16
    want = reference.attention(
        *(np.asarray(x.astype(jnp.float32)) for x in (qb, kb, vb)), mask=reference.causal(q.shape[1], k.shape[1])
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=2e-2, atol=2e-2)
    probs = ops.attention_weights(qb, kb, is_causal=True)
    assert probs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)


def test_dropout():
    q, k, v = make_qkv(*SHAPES["mha"])
    v_ones = np.ones_like(v)
    rng = jax.random.key(0)
    base = ops.dot_product_attention(q, k, v)
    np.testing.assert_array_equal(ops.dot_product_attention(q, k, v, dropout_rate=0.0, dropout_rng=rng), base)
    a = ops.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)
    b = ops.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)
    np.testing.assert_array_equal(a, b)  # deterministic given the key
    assert not np.allclose(a, base)
    # Inverted dropout: with values all 1 the output is sum(kept probs) / (1 - rate), whose mean over keys is 1.
    outs = jax.vmap(lambda r: ops.dot_product_attention(q, k, v_ones, dropout_rate=0.25, dropout_rng=r))(
        jax.random.split(rng, 400)
    )
    np.testing.assert_allclose(np.asarray(outs).mean(), 1.0, atol=0.01)
    kept = np.asarray(outs)
    assert kept.min() < 0.9 and kept.max() > 1.1
    with pytest.raises(ValueError, match="dropout_rng"):
        ops.dot_product_attention(q, k, v, dropout_rate=0.1)
    with pytest.raises(ValueError, match="dropout_rate"):
        ops.dot_product_attention(q, k, v, dropout_rate=1.0, dropout_rng=rng)


def test_vmap_over_an_extra_leading_axis():
    q, k, v = make_qkv(*SHAPES["gqa"])
    stacked = [np.stack([x, x[::-1]]) for x in (q, k, v)]
    got = jax.vmap(functools.partial(ops.dot_product_attention, is_causal=True))(*stacked)
    np.testing.assert_allclose(got[1], ops.dot_product_attention(q[::-1], k[::-1], v[::-1], is_causal=True), atol=1e-6)


class TestBadInput:
    q, k, v = make_qkv(2, 4, 6, 4, 2, 8, 8)

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"query": np.zeros((2, 4, 32), np.float32)}, ValueError, r"`query` must have rank 4.*\(2, 4, 32\)"),
            ({"key": np.zeros((3, 6, 2, 8), np.float32)}, ValueError, r"`key` of shape \(3, 6, 2, 8\)"),
            ({"key": np.zeros((2, 6, 2, 7), np.float32)}, ValueError, r"`key`.*H=8"),
            ({"key": np.zeros((2, 6, 3, 8), np.float32)}, ValueError, r"multiple.*K=3"),
            ({"value": np.zeros((2, 5, 2, 8), np.float32)}, ValueError, r"`value` of shape \(2, 5, 2, 8\)"),
            ({"value": np.zeros((2, 6, 2, 8), np.float16)}, TypeError, r"`value` dtype"),
            ({"key": np.zeros((2, 6, 2, 8), np.float16)}, TypeError, r"`key` dtype"),
            ({"mask": np.ones((2, 4, 4, 6), np.float32)}, TypeError, r"`mask` must be a boolean.*float32"),
            ({"mask": np.ones((2, 4, 6, 4), bool)}, ValueError, r"`mask` of shape \(2, 4, 6, 4\).*\(2, 4, 4, 6\)"),
            ({"mask": np.ones((3, 1, 4, 6), bool)}, ValueError, r"`mask` of shape \(3, 1, 4, 6\)"),
            ({"mask": np.ones((1, 2, 1, 4, 6), bool)}, ValueError, r"`mask` has rank 5"),
            ({"mask": np.ones((2, 2, 4, 6), bool)}, ValueError, r"`mask` of shape \(2, 2, 4, 6\)"),
            ({"bias": np.ones((2, 4, 4, 5), np.float32)}, ValueError, r"`bias` of shape \(2, 4, 4, 5\)"),
            ({"bias": np.ones((2, 4, 4, 6), bool)}, TypeError, r"`bias` must have a floating dtype"),
        ],
    )
    def test_errors_name_the_argument_and_shapes(self, kwargs, error, match):
        args = {"query": self.q, "key": self.k, "value": self.v, **kwargs}
        q, k, v = args.pop("query"), args.pop("key"), args.pop("value")
        with pytest.raises(error, match=match):
            ops.dot_product_attention(q, k, v, **args)

    def test_integer_query_is_rejected(self):
        with pytest.raises(TypeError, match="`query` must have a floating dtype"):
            ops.attention_weights(np.zeros((1, 2, 1, 4), np.int32), np.zeros((1, 2, 1, 4), np.int32))


@hypothesis.given(
    B=st.integers(1, 2),
    T=st.integers(1, 6),
    S=st.integers(1, 6),
    K=st.integers(1, 2),
    G=st.integers(1, 3),
    H=st.sampled_from([1, 4]),
    mask_seed=st.integers(0, 2**16),
    mask_shape=st.sampled_from(["BNTS", "B1TS", "11TS", "TS", "none"]),
    is_causal=st.booleans(),
)
def test_hypothesis_shapes_and_masks(B, T, S, K, G, H, mask_seed, mask_shape, is_causal):
    N = K * G
    q, k, v = make_qkv(B, T, S, N, K, H, H, seed=mask_seed)
    dims = {"B": B, "N": N, "T": T, "S": S, "1": 1}
    mask = None if mask_shape == "none" else random_mask(tuple(dims[c] for c in mask_shape), seed=mask_seed)
    got = ops.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    full_mask = np.ones((1, 1, T, S), bool) if mask is None else mask
    if is_causal:
        full_mask = full_mask & reference.causal(T, S)
    np.testing.assert_allclose(got, reference.attention(q, k, v, mask=full_mask), rtol=1e-5, atol=1e-5)


class TestMoreBadInput:
    """Wrong values and wrong kinds of objects: a jaxformer error naming the argument, never one from inside jax."""

    q, k, v = make_qkv(1, 3, 4, 2, 1, 4, 4)

    @pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
    @pytest.mark.parametrize("fn", ["dot_product_attention", "attention_weights"])
    def test_scale_must_be_a_finite_positive_number(self, scale, fn):
        args = (self.q, self.k, self.v) if fn == "dot_product_attention" else (self.q, self.k)
        with pytest.raises(ValueError, match=r"`scale` must be a finite number > 0; got"):
            getattr(ops, fn)(*args, scale=scale)
        with pytest.raises(TypeError, match=r"`scale` must be a real number; got 'a'"):
            getattr(ops, fn)(*args, scale="a")

    @pytest.mark.parametrize(
        "rng, match",
        [(0, r"`dropout_rng` must be a jax.random key .*got 0 \(int\)"), (np.zeros(2, np.float32), "dtype float32")],
    )
    def test_dropout_rng_must_be_a_key(self, rng, match):
        with pytest.raises(TypeError, match=match):
            ops.dot_product_attention(self.q, self.k, self.v, dropout_rate=0.5, dropout_rng=rng)
        # a raw uint32 key (jax.random.PRNGKey) is a key
        ops.dot_product_attention(self.q, self.k, self.v, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(0))

    def test_dropout_rate_and_is_causal_kinds(self):
        with pytest.raises(TypeError, match=r"`dropout_rate` must be a real number; got 'x'"):
            ops.dot_product_attention(self.q, self.k, self.v, dropout_rate="x", dropout_rng=jax.random.key(0))
        with pytest.raises(TypeError, match=r"`is_causal` must be True or False; got 'yes'"):
            ops.dot_product_attention(self.q, self.k, self.v, is_causal="yes")

    @pytest.mark.parametrize("bad", ["abc", {"a": 1}, [["x"]]])
    def test_non_numeric_inputs_are_a_type_error_naming_them(self, bad):
        with pytest.raises(TypeError, match=r"`query` must be a numeric array"):
            ops.dot_product_attention(bad, self.k, self.v)

    def test_python_lists_are_accepted_as_arrays(self):
        want = ops.dot_product_attention(self.q, self.k, self.v)
        got = ops.dot_product_attention(self.q.tolist(), self.k.tolist(), self.v.tolist())
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(
            ops.attention_weights(self.q.tolist(), self.k.tolist()), ops.attention_weights(self.q, self.k), rtol=1e-6
        )

    @pytest.mark.parametrize("dim", ["N", "K", "H"])
    def test_zero_heads_or_head_dim_is_a_value_error(self, dim):
        shapes = {
            "N": ((1, 3, 0, 4), (1, 4, 1, 4)),
            "K": ((1, 3, 2, 4), (1, 4, 0, 4)),
            "H": ((1, 3, 2, 0), (1, 4, 1, 0)),
        }
        q_shape, k_shape = shapes[dim]
        with pytest.raises(ValueError, match=f"{dim}=0"):
            ops.attention_weights(np.zeros(q_shape, np.float32), np.zeros(k_shape, np.float32))


@pytest.mark.parametrize("T, S", [(0, 4), (3, 0), (0, 0)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_empty_sequences_give_an_empty_output_or_zeros(T, S, is_causal, use_jit):
    """T = 0: an empty [B, 0, N, Hv] output; S = 0 (no key): zeros, as for a fully masked row; never NaN, also in
    the gradients."""
    q, k, v = make_qkv(2, T, S, 4, 2, 8, 5)
    fn = functools.partial(ops.dot_product_attention, is_causal=is_causal)
    fn = jax.jit(fn) if use_jit else fn
    out = fn(q, k, v, mask=np.ones((T, S), bool))
    assert out.shape == (2, T, 4, 5)
    np.testing.assert_array_equal(out, np.zeros((2, T, 4, 5)))
    grads = jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    probs = ops.attention_weights(q, k, is_causal=is_causal)
    assert probs.shape == (2, 4, T, S) and not np.isnan(np.asarray(probs)).any()


# -- Logit soft-capping (Gemma 2): cap * tanh(scale * q . k / cap), before the bias and the mask ----------------------

SOFTCAP = 2.0


def softcap_inputs(seed=6):
    """GQA inputs whose scaled logits reach well beyond SOFTCAP (so the cap binds), a mask with no empty row, and a
    bias."""
    B, T, S, N, K, H, Hv = SHAPES["gqa"]
    q, k, v = make_qkv(*SHAPES["gqa"], seed=seed)
    q = 4 * q
    mask = random_mask((B, N, T, S), seed=seed) | np.eye(T, S, dtype=bool)
    bias = np.random.default_rng(seed).normal(size=(1, N, T, S)).astype(np.float32)
    logits = np.einsum("btnh,bsnh->bnts", q, np.repeat(k, N // K, axis=2)) / np.sqrt(H)
    assert np.abs(logits).max() > 3 * SOFTCAP  # the cap binds
    return q, k, v, mask, bias


def jnp_softcap_attention(q, k, v, *, mask, bias, cap):
    """A plain-jnp softcapped attention (autodiff through tanh gives the reference gradients); no empty rows."""
    G = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    x = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    logits = jnp.where(mask, cap * jnp.tanh(x / cap) + bias, -jnp.inf)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_logit_softcap_matches_reference_with_mask_bias_and_gqa(use_jit):
    q, k, v, mask, bias = softcap_inputs()
    attend = functools.partial(ops.dot_product_attention, mask=mask, bias=bias)
    weights = functools.partial(ops.attention_weights, mask=mask, bias=bias)
    capped_attend = functools.partial(attend, logit_softcap=SOFTCAP)
    capped_weights = functools.partial(weights, logit_softcap=SOFTCAP)
    if use_jit:
        capped_attend, capped_weights = jax.jit(capped_attend), jax.jit(capped_weights)
    got = capped_attend(q, k, v)
    np.testing.assert_allclose(got, reference.attention(q, k, v, mask=mask, bias=bias, softcap=SOFTCAP), atol=1e-5)
    probs = capped_weights(q, k)
    np.testing.assert_allclose(probs, reference.attention_probs(q, k, mask=mask, bias=bias, softcap=SOFTCAP), atol=1e-6)
    # The cap changes the result (the test can fail), and None is no cap.
    assert np.abs(np.asarray(got) - np.asarray(attend(q, k, v))).max() > 1e-2
    assert np.abs(np.asarray(probs) - np.asarray(weights(q, k))).max() > 1e-2
    np.testing.assert_array_equal(attend(q, k, v, logit_softcap=None), attend(q, k, v))
    # A cap far above every logit changes nothing.
    np.testing.assert_allclose(attend(q, k, v, logit_softcap=1e4), attend(q, k, v), atol=1e-5)


def test_logit_softcap_gradients_match_autodiff_of_a_jnp_reference():
    q, k, v, mask, bias = softcap_inputs(seed=8)
    cot = np.random.default_rng(9).normal(size=q.shape[:3] + v.shape[-1:]).astype(np.float32)

    def loss(fn):
        return lambda q, k, v, bias: jnp.sum(fn(q, k, v, bias) * cot)

    got = jax.grad(
        loss(lambda q, k, v, b: ops.dot_product_attention(q, k, v, mask=mask, bias=b, logit_softcap=SOFTCAP)),
        argnums=(0, 1, 2, 3),
    )(q, k, v, bias)
    want = jax.grad(
        loss(lambda q, k, v, b: jnp_softcap_attention(q, k, v, mask=mask, bias=b, cap=SOFTCAP)), argnums=(0, 1, 2, 3)
    )(q, k, v, bias)
    uncapped = jax.grad(loss(lambda q, k, v, b: ops.dot_product_attention(q, k, v, mask=mask, bias=b)))(q, k, v, bias)
    assert np.abs(np.asarray(got[0]) - np.asarray(uncapped)).max() > 1e-2
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_logit_softcap_jit_equals_eager_also_when_traced():
    q, k, v, mask, bias = softcap_inputs()
    fn = lambda q, k, v, cap: ops.dot_product_attention(
        q, k, v, mask=mask, bias=bias, is_causal=True, logit_softcap=cap
    )
    eager = fn(q, k, v, SOFTCAP)
    np.testing.assert_allclose(jax.jit(fn, static_argnums=3)(q, k, v, SOFTCAP), eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(q, k, v, SOFTCAP), eager, rtol=1e-6, atol=1e-6)  # a traced cap


@pytest.mark.parametrize(
    "cap, error, match",
    [
        (0.0, ValueError, r"`logit_softcap` must be a finite number > 0; got 0.0"),
        (-1.0, ValueError, r"`logit_softcap` must be a finite number > 0; got -1.0"),
        (float("nan"), ValueError, r"`logit_softcap` must be a finite number > 0; got nan"),
        (float("inf"), ValueError, r"`logit_softcap` must be a finite number > 0; got inf"),
        ("x", TypeError, r"`logit_softcap` must be a real number; got 'x'"),
    ],
)
@pytest.mark.parametrize("fn", ["dot_product_attention", "attention_weights"])
def test_logit_softcap_must_be_a_finite_positive_number(cap, error, match, fn):
    q, k, v = make_qkv(1, 3, 4, 2, 1, 4, 4)
    args = (q, k, v) if fn == "dot_product_attention" else (q, k)
    with pytest.raises(error, match=match):
        getattr(ops, fn)(*args, logit_softcap=cap)
