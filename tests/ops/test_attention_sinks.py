"""Attention sinks (GPT-OSS): dot_product_attention, attention_weights and blockwise_attention with `sinks` against a
float64 NumPy reference (values and gradients, sinks included), with GQA, masks, biases, soft-capping, causal sliding
windows and rows whose every key is masked; transformers' own GPT-OSS eager attention in a slow test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import ops
from tests.ops.test_attention import SHAPES, make_qkv, random_mask
from tests.ops.test_blockwise import dense_mask, packed_segments


def probs_with_sinks64(q, k, sinks, *, mask=None, bias=None, scale=None, softcap=None):
    """float64 [B, N, T, S]: exp(l_s - m) / (sum_s' exp(l_s' - m) + exp(sink_n - m)) over the allowed keys,
    m = max(max_s l_s, sink_n); a row with no allowed key is all zeros (its weight all on the sink)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    B, T, N, H = q.shape
    k = np.repeat(k, N // k.shape[2], axis=2)  # query head n reads key head n // G
    scale = 1.0 / np.sqrt(H) if scale is None else scale
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if softcap is not None:
        logits = softcap * np.tanh(logits / softcap)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), logits.shape)
    sink = np.broadcast_to(np.asarray(sinks, np.float64)[None, :, None, None], (B, N, T, 1))
    row_max = np.maximum(np.where(allowed, logits, -np.inf).max(axis=-1, keepdims=True), sink)
    e = np.where(allowed, np.exp(logits - row_max), 0.0)
    return e / (e.sum(axis=-1, keepdims=True) + np.exp(sink - row_max))


def attention_with_sinks64(q, k, v, sinks, **kwargs):
    probs = probs_with_sinks64(q, k, sinks, **kwargs)
    v = np.repeat(np.asarray(v, np.float64), q.shape[2] // k.shape[2], axis=2)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def make_sinks(N, seed=0):
    return np.random.default_rng(seed).normal(size=(N,)).astype(np.float32) * 2.0


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_matches_float64_reference_with_mask_bias_and_softcap(shape, use_jit):
    B, T, S, N, K, H, Hv = shape
    q, k, v = make_qkv(*shape, seed=1)
    sinks = make_sinks(N)
    mask = random_mask((B, N, T, S))
    bias = np.random.default_rng(2).normal(size=(1, N, T, S)).astype(np.float32)
    fn = jax.jit(ops.dot_product_attention) if use_jit else ops.dot_product_attention
    cases = ({}, {"mask": mask}, {"bias": bias}, {"mask": mask, "bias": bias, "scale": 0.3}, {"logit_softcap": 1.5})
    for kwargs in cases:
        got = fn(q, k, v, sinks=sinks, **kwargs)
        ref = {("softcap" if key == "logit_softcap" else key): val for key, val in kwargs.items()}
        want = attention_with_sinks64(q, k, v, sinks, **ref)
        assert got.shape == (B, T, N, Hv) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(list(kwargs)))


def test_attention_weights_leave_the_sinks_share_out():
    B, T, S, N, K, H, _ = SHAPES["gqa"]
    q, k, _ = make_qkv(*SHAPES["gqa"], seed=3)
    sinks = make_sinks(N, seed=3)
    mask = random_mask((B, 1, T, S), seed=4)
    mask[0, 0, 2] = False  # a row with no key: all its weight is the sink's
    got = ops.attention_weights(q, k, mask=mask, sinks=sinks)
    want = probs_with_sinks64(q, k, sinks, mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    row_sums = np.asarray(got).sum(-1)
    assert np.all(row_sums < 1.0) and np.all(row_sums[0, :, 2] == 0.0)


def test_gqa_sinks_belong_to_query_heads_not_key_heads():
    """Query head n = k G + g reads key head k; each query head has its own sink (N of them, not K)."""
    B, T, S, N, K, H, Hv = SHAPES["gqa"]  # N = 6, K = 2
    q, k, v = make_qkv(*SHAPES["gqa"], seed=6)
    for head in range(N):
        sinks = np.zeros(N, np.float32)
        sinks[head] = 30.0  # this head's weights all go to its sink: its output vanishes, and only its own
        out = np.asarray(ops.dot_product_attention(q, k, v, sinks=sinks))
        plain = np.asarray(ops.dot_product_attention(q, k, v, sinks=np.zeros(N, np.float32)))
        assert np.abs(out[:, :, head]).max() < 1e-6
        others = [n for n in range(N) if n != head]
        np.testing.assert_array_equal(out[:, :, others], plain[:, :, others])


@pytest.mark.parametrize("window", [1, 3])
def test_causal_sliding_window_with_gqa(window):
    B, T, S, N, K, H, Hv = 2, 9, 9, 4, 2, 8, 8
    q, k, v = make_qkv(B, T, S, N, K, H, Hv, seed=7)
    sinks = make_sinks(N, seed=7)
    window_mask = ops.sliding_window_mask(T, S, window=window)
    got = ops.dot_product_attention(q, k, v, mask=window_mask, is_causal=True, sinks=sinks)
    want = attention_with_sinks64(q, k, v, sinks, mask=dense_mask(B, T, S, is_causal=True, window=window))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_sink_of_minus_infinity_is_no_sink_and_a_huge_one_takes_everything():
    q, k, v = make_qkv(*SHAPES["mha"], seed=8)
    N = q.shape[2]
    mask = random_mask((1, 1, q.shape[1], k.shape[1]), seed=8)
    mask[..., 0] = True
    plain = ops.dot_product_attention(q, k, v, mask=mask)
    no_sink = ops.dot_product_attention(q, k, v, mask=mask, sinks=np.full(N, -np.inf, np.float32))
    np.testing.assert_allclose(no_sink, plain, rtol=1e-6, atol=1e-6)
    everything = ops.dot_product_attention(q, k, v, mask=mask, sinks=np.full(N, 1e4, np.float32))
    assert float(jnp.abs(everything).max()) == 0.0


def test_rows_whose_every_key_is_masked_give_zeros_and_finite_gradients():
    B, T, S, N, K, H, Hv = SHAPES["gqa"]
    q, k, v = make_qkv(*SHAPES["gqa"], seed=9)
    sinks = make_sinks(N, seed=9)
    mask = random_mask((B, N, T, S), seed=9)
    mask[1, :, 3] = False  # every key of query 3 of batch element 1, in every head
    mask[0, 2] = False  # every row of head 2 of batch element 0
    out = ops.dot_product_attention(q, k, v, mask=mask, sinks=sinks)
    np.testing.assert_allclose(out, attention_with_sinks64(q, k, v, sinks, mask=mask), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(out)[1, 3] == 0.0) and np.all(np.asarray(out)[0, :, 2] == 0.0)

    def loss(q, k, v, sinks):
        return jnp.sum(ops.dot_product_attention(q, k, v, mask=mask, sinks=sinks) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, sinks)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    assert np.all(np.asarray(grads[0])[1, 3] == 0.0)  # a query that sees nothing gets no gradient
    # A sink-only row does not move its sink: with S == 0 keys every sink's gradient is exactly zero.
    k0, v0 = k[:, :0], v[:, :0]
    zero = jax.grad(lambda s: jnp.sum(ops.dot_product_attention(q, k0, v0, sinks=s)))(sinks)
    assert np.all(np.asarray(zero) == 0.0)


def test_gradients_match_float64_finite_differences_of_the_reference():
    """d/d(q, k, v, sinks) of <out, cot>, with GQA, a mask with an empty row and a soft cap."""
    B, T, S, N, K, H, Hv = SHAPES["gqa"]
    q, k, v = make_qkv(*SHAPES["gqa"], seed=10)
    sinks = make_sinks(N, seed=10)
    mask = random_mask((B, 1, T, S), seed=10)
    mask[..., 0] = True
    mask[0, 0, 4] = False
    cot = np.random.default_rng(11).normal(size=(B, T, N, Hv))

    def loss64(q, k, v, sinks):
        return np.sum(attention_with_sinks64(q, k, v, sinks, mask=mask, softcap=2.0) * cot)

    def loss(q, k, v, sinks):
        out = ops.dot_product_attention(q, k, v, mask=mask, logit_softcap=2.0, sinks=sinks)
        return jnp.sum(out * cot.astype(np.float32))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, sinks)
    assert float(jnp.abs(grads[3]).min()) > 0  # every head's sink gets a gradient
    eps = 1e-6
    rng = np.random.default_rng(12)
    for arg_index, grad in enumerate(grads):
        args = [np.asarray(a, np.float64) for a in (q, k, v, sinks)]
        indices = [(n,) for n in range(N)] if arg_index == 3 else None
        for idx in indices or [tuple(rng.integers(0, d) for d in args[arg_index].shape) for _ in range(5)]:
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[arg_index][idx] += eps
            minus[arg_index][idx] -= eps
            numeric = (loss64(*plus) - loss64(*minus)) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grad)[idx], numeric, rtol=1e-3, atol=1e-4)


def test_bfloat16_keeps_the_dtype_and_sinks_may_be_bfloat16():
    q, k, v = (x.astype(jnp.bfloat16) for x in make_qkv(*SHAPES["gqa"], seed=13))
    sinks = make_sinks(q.shape[2], seed=13)
    out = ops.dot_product_attention(q, k, v, sinks=jnp.asarray(sinks, jnp.bfloat16), is_causal=True)
    assert out.dtype == jnp.bfloat16
    causal = np.tril(np.ones((q.shape[1], k.shape[1]), bool))
    want = attention_with_sinks64(
        q.astype(np.float32),
        k.astype(np.float32),
        v.astype(np.float32),
        np.asarray(jnp.asarray(sinks, jnp.bfloat16), np.float32),
        mask=causal,
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=3e-2, atol=3e-2)


def test_sinks_with_dropout_keep_shape_and_are_exact_without_it():
    q, k, v = make_qkv(*SHAPES["mha"], seed=14)
    sinks = make_sinks(q.shape[2], seed=14)
    out = ops.dot_product_attention(q, k, v, sinks=sinks, dropout_rate=0.5, dropout_rng=jax.random.key(0))
    assert out.shape == q.shape and np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(
        ops.dot_product_attention(q, k, v, sinks=sinks, dropout_rate=0.0),
        attention_with_sinks64(q, k, v, sinks),
        rtol=1e-5,
        atol=1e-5,
    )


class TestBadSinks:
    @pytest.mark.parametrize("fn", ["dot_product_attention", "attention_weights", "blockwise_attention"])
    def test_wrong_shape_or_dtype_names_the_argument(self, fn):
        q, k, v = make_qkv(*SHAPES["gqa"])
        N, K = q.shape[2], k.shape[2]
        call = {
            "dot_product_attention": lambda s: ops.dot_product_attention(q, k, v, sinks=s),
            "attention_weights": lambda s: ops.attention_weights(q, k, sinks=s),
            "blockwise_attention": lambda s: ops.blockwise_attention(q, k, v, sinks=s),
        }[fn]
        for bad in (np.zeros(K, np.float32), np.zeros((1, N), np.float32), np.zeros(()), np.zeros(N + 1)):
            with pytest.raises(ValueError, match=rf"`sinks` must have shape \[N\] = \({N},\), one logit per query"):
                call(bad)
        with pytest.raises(TypeError, match=r"`sinks` must have a floating dtype; got int32"):
            call(np.zeros(N, np.int32))
        with pytest.raises(TypeError, match=r"`sinks` must be a numeric array"):
            call("zeros")


# ---------------------------------------------------------------------------------------------------------------------
# blockwise_attention: each row's online softmax starts from its sink


BLOCKWISE_CASES = {
    "none": {},
    "causal": {"is_causal": True},
    "causal_window": {"is_causal": True, "window": 4},
    "window": {"window": 3},
    "lengths_with_an_empty_row": {"kv_lengths": np.array([13, 0], np.int32)},
    "causal_segments": {"is_causal": True, "segment_ids": packed_segments(2, 19, 2)},
}


@pytest.mark.parametrize("case", BLOCKWISE_CASES.values(), ids=BLOCKWISE_CASES.keys())
@pytest.mark.parametrize("block_size", [4, 64])
def test_blockwise_equals_dense_values_and_gradients_with_sinks(case, block_size):
    B, T, N, K, H = 2, 19, 4, 2, 8
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=15)
    sinks = make_sinks(N, seed=15)
    cot = np.random.default_rng(16).normal(size=(B, T, N, H)).astype(np.float32)
    mask = dense_mask(B, T, T, **case)
    blockwise = functools.partial(ops.blockwise_attention, block_size=block_size, logit_softcap=3.0, **case)
    dense = functools.partial(ops.dot_product_attention, mask=mask, logit_softcap=3.0)

    def value_and_grads(fn):
        out, vjp = jax.vjp(lambda q, k, v, s: fn(q, k, v, sinks=s), q, k, v, sinks)
        return out, vjp(jnp.asarray(cot))

    got, got_grads = value_and_grads(blockwise)
    want, want_grads = value_and_grads(dense)
    np.testing.assert_allclose(got, attention_with_sinks64(q, k, v, sinks, mask=mask, softcap=3.0), atol=2e-5)
    np.testing.assert_allclose(got, want, atol=2e-5)
    for name, g, w in zip(("dq", "dk", "dv", "dsinks"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)
    assert float(jnp.abs(got_grads[3]).max()) > 0


def test_blockwise_sinks_jit_and_traced_sinks():
    B, T, N, K, H = 1, 10, 2, 1, 4
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=17)
    sinks = make_sinks(N, seed=17)
    fn = jax.jit(lambda q, k, v, s: ops.blockwise_attention(q, k, v, is_causal=True, block_size=4, sinks=s))
    want = attention_with_sinks64(q, k, v, sinks, mask=dense_mask(B, T, T, is_causal=True))
    np.testing.assert_allclose(fn(q, k, v, sinks), want, atol=2e-5)
    no_sink = fn(q, k, v, np.full(N, -np.inf, np.float32))
    np.testing.assert_allclose(no_sink, ops.blockwise_attention(q, k, v, is_causal=True, block_size=4), atol=1e-6)


def test_blockwise_empty_sequences_with_sinks():
    q, k, v = make_qkv(2, 3, 0, 4, 2, 8, 8)
    sinks = make_sinks(4)
    assert float(jnp.abs(ops.blockwise_attention(q, k, v, sinks=sinks)).max()) == 0.0
    grad = jax.grad(lambda s: jnp.sum(ops.blockwise_attention(q, k, v, sinks=s)))(sinks)
    assert np.all(np.asarray(grad) == 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# transformers' GPT-OSS


@pytest.mark.slow
def test_equals_transformers_gpt_oss_eager_attention():
    """transformers' eager_attention_forward of GPT-OSS (the sink column concatenated to the logits, the max
    subtracted, softmax, the column dropped), with GQA and a causal sliding-window additive mask."""
    torch = pytest.importorskip("torch")
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    B, T, N, K, H = 2, 7, 4, 2, 8
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=18)
    sinks = make_sinks(N, seed=18)
    mask = dense_mask(B, T, T, is_causal=True, window=3)
    additive = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sinks = torch.nn.Parameter(torch.from_numpy(sinks))
            self.num_key_value_groups = N // K

    module = Module().eval()
    bnth = lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))
    theirs, _ = gpt_oss.eager_attention_forward(
        module, bnth(q), bnth(k), bnth(v), torch.from_numpy(additive), scaling=H**-0.5, dropout=0.0
    )
    ours = ops.dot_product_attention(q, k, v, mask=mask, sinks=sinks)
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-5)
