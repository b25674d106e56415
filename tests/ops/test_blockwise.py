"""blockwise_attention equals dense attention (values and gradients) for every mask it describes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import ops
from tests.ops import reference
from tests.ops.test_attention import make_qkv


def dense_mask(B, T, S, *, is_causal=False, kv_lengths=None, window=None, segment_ids=None):
    """The [B, 1, T, S] mask that blockwise_attention's structural arguments describe, built in NumPy."""
    t = np.arange(T)[:, None]
    s = np.arange(S)[None, :]
    mask = np.ones((B, 1, T, S), bool)
    if is_causal:
        mask &= s <= t
    if window is not None:
        mask &= (t - s < window) if is_causal else (np.abs(t - s) < window)
    if kv_lengths is not None:
        mask &= s[None, None] < np.asarray(kv_lengths)[:, None, None, None]
    if segment_ids is not None:
        q_ids, kv_ids = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        mask &= np.asarray(q_ids)[:, None, :, None] == np.asarray(kv_ids)[:, None, None, :]
    return mask


def packed_segments(B, L, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.cumsum(rng.random(L) < 0.2) for _ in range(B)]).astype(np.int32)


def value_and_grads(fn, q, k, v, cot):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(jnp.asarray(cot, out.dtype))


CASES = {
    "none": {},
    "causal": {"is_causal": True},
    "lengths": {"kv_lengths": np.array([13, 4], np.int32)},
    "causal_lengths": {"is_causal": True, "kv_lengths": np.array([19, 7], np.int32)},
    "window": {"window": 4},
    "causal_window": {"is_causal": True, "window": 5},
    "segments": {"segment_ids": packed_segments(2, 19)},
    "causal_segments_lengths": {"is_causal": True, "segment_ids": packed_segments(2, 19, 1), "kv_lengths": [15, 19]},
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
# 4: several blocks per row (19 keys), 64: one block; 8 (another tiling of the same cases) runs with -m slow.
@pytest.mark.parametrize("block_size", [4, pytest.param(8, marks=pytest.mark.slow), 64])
def test_equals_dense_values_and_gradients(case, block_size):
    B, T, N, K, H = 2, 19, 4, 2, 8  # 19 is not a multiple of any block size; GQA with G = 2
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=block_size)
    case = {key: (np.asarray(val, np.int32) if key == "kv_lengths" else val) for key, val in case.items()}
    cot = np.random.default_rng(1).normal(size=(B, T, N, H)).astype(np.float32)
    mask = dense_mask(B, T, T, **case)

    got, got_grads = value_and_grads(
        lambda q, k, v: ops.blockwise_attention(q, k, v, block_size=block_size, **case), q, k, v, cot
    )
    want, want_grads = value_and_grads(lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask), q, k, v, cot)
    np.testing.assert_allclose(got, reference.attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cross_attention_with_different_lengths_and_value_width():
    B, T, S, N, K, H, Hv = 2, 7, 23, 6, 3, 4, 5
    q, k, v = make_qkv(B, T, S, N, K, H, Hv)
    lengths = np.array([23, 10], np.int32)
    ids = (packed_segments(B, T, 2), packed_segments(B, S, 3))
    cot = np.random.default_rng(2).normal(size=(B, T, N, Hv)).astype(np.float32)
    for kwargs in ({"kv_lengths": lengths}, {"is_causal": True}, {"segment_ids": ids}):
        mask = dense_mask(B, T, S, **kwargs)
        got, got_grads = value_and_grads(
            lambda q, k, v, kw=kwargs: ops.blockwise_attention(q, k, v, block_size=4, **kw), q, k, v, cot
        )
        want, want_grads = value_and_grads(
            lambda q, k, v, m=mask: ops.dot_product_attention(q, k, v, mask=m), q, k, v, cot
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        for g, w in zip(got_grads, want_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_rows_with_nothing_to_attend_are_zero_with_finite_gradients():
    B, T, N, H = 2, 10, 2, 4
    q, k, v = make_qkv(B, T, T, N, N, H, H)
    lengths = np.array([0, 6], np.int32)  # example 0 has no valid key at all

    def loss(q, k, v):
        return jnp.sum(jnp.sin(ops.blockwise_attention(q, k, v, kv_lengths=lengths, block_size=4)))

    out = ops.blockwise_attention(q, k, v, kv_lengths=lengths, block_size=4)
    assert np.all(np.asarray(out)[0] == 0)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0])[0] == 0)
    assert np.all(np.asarray(grads[1])[1, 6:] == 0)  # keys beyond the length get no gradient


def test_jit_vmap_and_bfloat16():
    B, T, N, H = 2, 12, 2, 8
    q, k, v = make_qkv(B, T, T, N, N, H, H)
    fn = lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, block_size=5)
    eager = fn(q, k, v)
    np.testing.assert_allclose(jax.jit(fn)(q, k, v), eager, rtol=1e-6, atol=1e-6)
    stacked = jax.vmap(fn)(*(np.stack([x, 2 * x]) for x in (q, k, v)))
    np.testing.assert_allclose(stacked[0], eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked[1], fn(2 * q, 2 * k, 2 * v), rtol=1e-5, atol=1e-5)
    qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out = fn(qb, kb, vb)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), eager, rtol=3e-2, atol=3e-2)
    grads = jax.grad(lambda q: fn(q, kb, vb).astype(jnp.float32).sum())(qb)
    assert grads.dtype == jnp.bfloat16


def test_never_materialises_the_full_score_matrix():
    """XLA's own buffer accounting: forward+backward temporaries stay far below one [T, S] float32 matrix."""
    B, T, N, H = 1, 2048, 1, 16
    q, k, v = (jax.ShapeDtypeStruct((B, T, N, H), jnp.float32) for _ in range(3))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)

    def temp_bytes(fn):
        grad_fn = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))
        return grad_fn.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    score_matrix = T * T * 4
    dense = temp_bytes(lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True))
    blockwise = temp_bytes(lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, block_size=256))
    assert dense >= score_matrix  # the check can see a [T, S] buffer when there is one
    assert blockwise < score_matrix / 8, (blockwise, score_matrix)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"kv_lengths": np.array([3], np.int32)}, ValueError, r"`kv_lengths` must have shape \[B\] = \(2,\)"),
        ({"kv_lengths": np.array([3, 9], np.int32)}, ValueError, r"`kv_lengths` must lie in \[0, S=8\]"),
        ({"kv_lengths": np.array([3.0, 2.0])}, TypeError, r"`kv_lengths` must have an integer dtype"),
        ({"window": 0}, ValueError, r"`window` must be a positive int"),
        ({"block_size": 0}, ValueError, r"`block_size` must be a positive int"),
        ({"segment_ids": np.zeros((2, 7), np.int32)}, ValueError, r"`segment_ids` must be \[B=2, T=8\]; got shape"),
        ({"segment_ids": np.zeros((2, 8), np.float32)}, TypeError, r"segment_ids.*integer"),
        ({"segment_ids": (np.zeros((2, 8), np.int32),)}, ValueError, r"pair"),
        (
            {"segment_ids": (np.zeros((2, 8), np.int32), np.zeros((2, 7), np.int32))},
            ValueError,
            r"`kv_segment_ids` must be \[B=2, S=8\]; got shape \(2, 7\)",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    q, k, v = make_qkv(2, 8, 8, 2, 2, 4, 4)
    with pytest.raises(error, match=match):
        ops.blockwise_attention(q, k, v, **kwargs)


def test_single_segment_ids_need_self_attention():
    q, _, _ = make_qkv(2, 8, 8, 2, 2, 4, 4)
    _, k, v = make_qkv(2, 8, 6, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="T == S"):
        ops.blockwise_attention(q, k, v, segment_ids=np.zeros((2, 8), np.int32))


def test_packed_segments_narrow_the_blocks_each_block_visits():
    from jaxformer.ops.blockwise import _Plan, _segment_block_ranges

    plan = _Plan(scale=1.0, q_block=4, kv_block=4, q_len=16, kv_len=16, left=None, right=0)
    one = np.array([[0] * 4 + [1] * 4 + [2] * 8], np.int32)  # segments fill blocks 0, 1 and 2-3
    kv_of_q, q_of_kv = (np.asarray(r) for r in _segment_block_ranges(plan, one, one))
    assert kv_of_q.tolist() == [[0, 1], [1, 2], [2, 4], [2, 4]]
    assert q_of_kv.tolist() == [[0, 1], [1, 2], [2, 4], [2, 4]]
    straddling = np.array([[0] * 6 + [1] * 10], np.int32)  # block 1 holds the end of 0 and the start of 1
    both = np.concatenate([one, straddling])
    kv_of_q = np.asarray(_segment_block_ranges(plan, both, both)[0])
    assert kv_of_q.tolist() == [[0, 2], [0, 4], [1, 4], [1, 4]]  # over the batch: the union of both examples
    unsorted = np.array([[0] * 4 + [1] * 4 + [0] * 8], np.int32)  # a segment id comes back: nothing is skipped
    kv_of_q, q_of_kv = (np.asarray(r) for r in _segment_block_ranges(plan, unsorted, unsorted))
    assert kv_of_q.tolist() == [[0, 4]] * 4 and q_of_kv.tolist() == [[0, 4]] * 4


@pytest.mark.parametrize("is_causal", [False, True])
def test_unsorted_and_sorted_segment_ids_both_equal_dense(is_causal):
    B, T, N, H = 2, 37, 2, 8
    q, k, v = make_qkv(B, T, T, N, N, H, H, seed=7)
    cot = np.random.default_rng(3).normal(size=(B, T, N, H)).astype(np.float32)
    rng = np.random.default_rng(4)
    for ids in (packed_segments(B, T, 5), rng.integers(0, 3, size=(B, T)).astype(np.int32)):
        mask = dense_mask(B, T, T, is_causal=is_causal, segment_ids=ids)
        fn = lambda q, k, v, ids=ids: ops.blockwise_attention(
            q, k, v, is_causal=is_causal, segment_ids=ids, block_size=8
        )
        got, got_grads = value_and_grads(fn, q, k, v, cot)
        np.testing.assert_allclose(got, reference.attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)
        want_grads = value_and_grads(lambda q, k, v, m=mask: ops.dot_product_attention(q, k, v, mask=m), q, k, v, cot)[
            1
        ]
        for g, w in zip(got_grads, want_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    ids = packed_segments(B, T, 6)  # under vmap the block ranges are batched, so the loop bounds are too
    fn = lambda q, k, v, ids: ops.blockwise_attention(q, k, v, is_causal=is_causal, segment_ids=ids, block_size=8)
    stacked = jax.vmap(fn)(*(np.stack([x, x[::-1]]) for x in (q, k, v, ids)))
    np.testing.assert_allclose(stacked[1], fn(q[::-1], k[::-1], v[::-1], ids[::-1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T, S", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_empty_sequences_equal_the_dense_path(T, S, is_causal):
    """As the dense path: T = 0 gives an empty output, S = 0 zeros (no key to attend to), with finite gradients."""
    q, k, v = make_qkv(2, T, S, 4, 2, 8, 5)
    fn = jax.jit(lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=is_causal, block_size=2))
    got = fn(q, k, v)
    np.testing.assert_array_equal(got, ops.dot_product_attention(q, k, v, is_causal=is_causal))
    assert got.shape == (2, T, 4, 5)
    grads = jax.grad(lambda *a: fn(*a).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() and g.shape == x.shape for g, x in zip(grads, (q, k, v), strict=True))


def test_lists_are_accepted_and_bad_scalars_named():
    q, k, v = make_qkv(1, 3, 3, 2, 1, 4, 4)
    np.testing.assert_allclose(
        ops.blockwise_attention(q.tolist(), k.tolist(), v.tolist()), ops.blockwise_attention(q, k, v), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"`scale` must be a finite number > 0; got nan"):
        ops.blockwise_attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match=r"`is_causal` must be True or False"):
        ops.blockwise_attention(q, k, v, is_causal=1)


SOFTCAP_CASES = {
    "causal": {"is_causal": True},
    "window": {"window": 4},
    "causal_segments_lengths": {"is_causal": True, "segment_ids": packed_segments(2, 19, 1), "kv_lengths": [15, 19]},
}


@pytest.mark.parametrize("case", SOFTCAP_CASES.values(), ids=SOFTCAP_CASES.keys())
def test_logit_softcap_equals_dense_values_and_gradients(case):
    """With a cap that binds, over several blocks: the custom backward's factor 1 - (cap(x) / c)^2 is right."""
    B, T, N, K, H, cap = 2, 19, 4, 2, 8, 1.5
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=11)
    q = 4 * q  # scaled logits up to ~10 * cap
    case = {key: (np.asarray(val, np.int32) if key == "kv_lengths" else val) for key, val in case.items()}
    cot = np.random.default_rng(5).normal(size=(B, T, N, H)).astype(np.float32)
    mask = dense_mask(B, T, T, **case)

    got, got_grads = value_and_grads(
        lambda q, k, v: ops.blockwise_attention(q, k, v, block_size=4, logit_softcap=cap, **case), q, k, v, cot
    )
    want, want_grads = value_and_grads(
        lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask, logit_softcap=cap), q, k, v, cot
    )
    uncapped, uncapped_grads = value_and_grads(
        lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask), q, k, v, cot
    )
    assert np.abs(np.asarray(got) - np.asarray(uncapped)).max() > 1e-2  # the cap binds
    assert np.abs(np.asarray(got_grads[1]) - np.asarray(uncapped_grads[1])).max() > 1e-2
    np.testing.assert_allclose(got, reference.attention(q, k, v, mask=mask, softcap=cap), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_logit_softcap_bad_values_are_named():
    q, k, v = make_qkv(1, 3, 3, 2, 1, 4, 4)
    for cap in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"`logit_softcap` must be a finite number > 0"):
            ops.blockwise_attention(q, k, v, logit_softcap=cap)
    with pytest.raises(TypeError, match=r"`logit_softcap` must be a real number; got 'x'"):
        ops.blockwise_attention(q, k, v, logit_softcap="x")
