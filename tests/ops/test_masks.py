"""Tests for jaxformer.ops.masks against NumPy references built with explicit loops or np.tril."""

import functools
import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.ops import masks

# ---------------------------------------------------------------------------------------------------------------------
# NumPy references: each returns a bool array in the 4-D layout [B or 1, 1, T, S].


def np_causal(T, S, offset=0):
    """s <= t + offset, via np.tril's diagonal offset."""
    return np.tril(np.ones((T, S), bool), k=offset)[None, None]


def np_sliding_window(T, S, window, causal, offset=0):
    out = np.zeros((T, S), bool)
    for t in range(T):
        for s in range(S):
            d = t + offset - s
            out[t, s] = (0 <= d < window) if causal else abs(d) < window
    return out[None, None]


def np_block_sparse(T, S, block_size, window_blocks, global_blocks):
    out = np.zeros((T, S), bool)
    for t in range(T):
        for s in range(S):
            i, j = t // block_size, s // block_size
            out[t, s] = abs(i - j) <= window_blocks or i < global_blocks or j < global_blocks
    return out[None, None]


def np_pairwise(q_values, kv_values, fn):
    """[B, T] and [B, S] -> [B, 1, T, S] with out[b, 0, t, s] = fn(q_values[b, t], kv_values[b, s])."""
    B, T = q_values.shape
    S = kv_values.shape[1]
    out = np.zeros((B, 1, T, S), bool)
    for b in range(B):
        for t in range(T):
            for s in range(S):
                out[b, 0, t, s] = fn(q_values[b, t], kv_values[b, s])
    return out


def run_jit(fn, *args, **kwargs):
    """Calls `fn` under jax.jit with every argument closed over (static): one fused compile instead of one per op."""
    return jax.jit(lambda: fn(*args, **kwargs))()


def assert_mask_equal(got, want):
    assert got.dtype == jnp.bool_, got.dtype
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(np.asarray(got), want)


# ---------------------------------------------------------------------------------------------------------------------
# causal_mask


def test_causal_mask_square_is_lower_triangular():
    assert_mask_equal(masks.causal_mask(5), np.tril(np.ones((5, 5), bool))[None, None])


@pytest.mark.parametrize(
    ("q_len", "kv_len", "offset"),
    [(3, 5, 0), (3, 5, 2), (5, 3, 0), (4, 7, 3), (1, 6, 5), (2, 4, 10)],
)
def test_causal_mask_rectangular_and_offset(q_len, kv_len, offset):
    assert_mask_equal(run_jit(masks.causal_mask, q_len, kv_len, offset=offset), np_causal(q_len, kv_len, offset))


def test_causal_mask_offset_kv_minus_q_puts_queries_at_the_end():
    # Decoding 2 new tokens after a cache of 4: the last query sees every key, the first all but the last.
    m = np.asarray(masks.causal_mask(2, 6, offset=4))[0, 0]
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])


def test_causal_mask_traced_offset_under_jit():
    fn = jax.jit(lambda offset: masks.causal_mask(3, 6, offset=offset))
    for offset in (0, 1, 3):
        assert_mask_equal(fn(jnp.int32(offset)), np_causal(3, 6, offset))


def test_causal_mask_per_example_offset():
    offsets = np.array([0, 2, 1, 3], np.int32)
    got = masks.causal_mask(3, 5, offset=offsets)
    want = np.concatenate([np_causal(3, 5, int(o)) for o in offsets], axis=0)
    assert got.shape == (4, 1, 3, 5)
    assert_mask_equal(got, want)
    # The same under jit with a traced [B] offset.
    assert_mask_equal(jax.jit(lambda o: masks.causal_mask(3, 5, offset=o))(offsets), want)


@pytest.mark.parametrize("offset", [-1, np.array([0, -2], np.int32)])
def test_causal_mask_negative_offset_raises(offset):
    with pytest.raises(ValueError, match="offset"):
        masks.causal_mask(3, 5, offset=offset)


def test_causal_mask_float_offset_raises():
    with pytest.raises(TypeError, match="offset"):
        masks.causal_mask(3, 5, offset=1.0)


def test_causal_mask_offset_of_rank_two_raises():
    with pytest.raises(ValueError, match="offset"):
        masks.causal_mask(3, 5, offset=np.zeros((2, 1), np.int32))


@pytest.mark.parametrize(
    ("q_len", "kv_len", "name"), [(-1, 3, "q_len"), (3, -2, "kv_len"), (2.0, 3, "q_len"), (3, -1, "kv_len")]
)
def test_causal_mask_bad_lengths_raise(q_len, kv_len, name):
    with pytest.raises(ValueError, match=f"`{name}` must be a non-negative int"):
        masks.causal_mask(q_len, kv_len)


@pytest.mark.parametrize(("q_len", "kv_len"), [(0, 3), (3, 0), (0, 0)])
def test_position_masks_of_empty_sequences_are_empty(q_len, kv_len):
    """An empty query or key sequence gives an empty mask of the right shape (attention accepts T = 0, S = 0)."""
    for mask in (
        masks.causal_mask(q_len, kv_len),
        masks.sliding_window_mask(q_len, kv_len, window=2),
        masks.no_self_mask(q_len, kv_len),
    ):
        assert mask.shape == (1, 1, q_len, kv_len) and mask.dtype == jnp.bool_
    assert masks.lengths_to_valid(np.zeros(2, np.int32), 0).shape == (2, 0)


@hypothesis.given(q_len=st.integers(1, 8), kv_len=st.integers(1, 8), offset=st.integers(0, 8))
def test_causal_mask_matches_reference_for_any_shape(q_len, kv_len, offset):
    assert_mask_equal(run_jit(masks.causal_mask, q_len, kv_len, offset=offset), np_causal(q_len, kv_len, offset))


# ---------------------------------------------------------------------------------------------------------------------
# sliding_window_mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("q_len", "kv_len", "window", "offset"),
    [(6, 6, 1, 0), (6, 6, 2, 0), (6, 6, 3, 0), (4, 7, 2, 3), (5, 3, 2, 0), (3, 8, 4, 2)],
)
def test_sliding_window_mask_matches_reference(q_len, kv_len, window, offset, causal):
    got = run_jit(masks.sliding_window_mask, q_len, kv_len, window=window, causal=causal, offset=offset)
    assert_mask_equal(got, np_sliding_window(q_len, kv_len, window, causal, offset))


def test_sliding_window_mask_window_one_is_the_diagonal():
    eye = np.eye(4, dtype=bool)[None, None]
    assert_mask_equal(masks.sliding_window_mask(4, window=1), eye)
    assert_mask_equal(masks.sliding_window_mask(4, window=1, causal=False), eye)


def test_sliding_window_mask_wide_window_equals_causal_mask():
    got = masks.sliding_window_mask(4, 7, window=7 + 3, offset=3)
    assert_mask_equal(got, np.asarray(masks.causal_mask(4, 7, offset=3)))


def test_sliding_window_mask_causal_rows_see_exactly_window_keys():
    m = np.asarray(masks.sliding_window_mask(10, window=3))[0, 0]
    np.testing.assert_array_equal(m.sum(-1), [1, 2, 3, 3, 3, 3, 3, 3, 3, 3])


def test_sliding_window_mask_per_example_offset():
    offsets = np.array([0, 2], np.int32)
    got = masks.sliding_window_mask(3, 6, window=2, offset=offsets)
    want = np.concatenate([np_sliding_window(3, 6, 2, True, int(o)) for o in offsets], axis=0)
    assert_mask_equal(got, want)


@pytest.mark.parametrize(("window", "error"), [(0, ValueError), (-2, ValueError), (1.5, ValueError), (None, TypeError)])
def test_sliding_window_mask_bad_window_raises(window, error):
    with pytest.raises(error, match="`window` must be a positive int"):
        masks.sliding_window_mask(4, window=window)


def test_sliding_window_mask_negative_offset_raises():
    with pytest.raises(ValueError, match="offset"):
        masks.sliding_window_mask(4, window=2, offset=-1)


# ---------------------------------------------------------------------------------------------------------------------
# no_self_mask


@pytest.mark.parametrize(("q_len", "kv_len"), [(4, None), (3, 5), (5, 2)])
def test_no_self_mask(q_len, kv_len):
    S = q_len if kv_len is None else kv_len
    want = np.ones((q_len, S), bool)
    for t in range(min(q_len, S)):
        want[t, t] = False
    assert_mask_equal(masks.no_self_mask(q_len, kv_len), want[None, None])


# ---------------------------------------------------------------------------------------------------------------------
# lengths_to_valid


def test_lengths_to_valid():
    lengths = np.array([0, 3, 5, 1], np.int32)
    want = np.zeros((4, 5), bool)
    for b, n in enumerate(lengths):
        want[b, :n] = True
    assert_mask_equal(masks.lengths_to_valid(lengths, 5), want)
    assert_mask_equal(jax.jit(masks.lengths_to_valid, static_argnums=1)(lengths, 5), want)


@pytest.mark.parametrize("lengths", [[-1, 2], [2, 6]])
def test_lengths_to_valid_out_of_range_raises(lengths):
    with pytest.raises(ValueError, match="lengths"):
        masks.lengths_to_valid(np.array(lengths, np.int32), 5)


def test_lengths_to_valid_float_lengths_raise():
    with pytest.raises(TypeError, match="lengths"):
        masks.lengths_to_valid(np.array([1.0, 2.0]), 5)


def test_lengths_to_valid_wrong_rank_raises():
    with pytest.raises(ValueError, match=r"lengths.*rank 1"):
        masks.lengths_to_valid(np.array([[1, 2]], np.int32), 5)


@pytest.mark.parametrize("max_len", [-1, 2.0])
def test_lengths_to_valid_bad_max_len_raises(max_len):
    with pytest.raises(ValueError, match="`max_len` must be a non-negative int"):
        masks.lengths_to_valid(np.array([0], np.int32), max_len)


def test_block_sparse_mask_refuses_an_int_for_rng():
    with pytest.raises(TypeError, match=r"`rng` must be a jax.random key .*got 0 \(int\)"):
        masks.block_sparse_mask(8, 8, block_size=2, window_blocks=0, global_blocks=0, random_blocks=1, rng=0)


# ---------------------------------------------------------------------------------------------------------------------
# padding_mask


def test_padding_mask_self_attention():
    valid = np.array([[1, 1, 0], [1, 1, 1]], bool)
    got = masks.padding_mask(valid)
    assert_mask_equal(got, np_pairwise(valid, valid, lambda a, b: a and b))
    assert not np.asarray(got)[0, 0, 2].any(), "a padded query row must attend to nothing"


def test_padding_mask_cross_attention():
    q_valid = np.array([[1, 0], [1, 1]], bool)
    kv_valid = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
    got = masks.padding_mask(q_valid, kv_valid)
    assert got.shape == (2, 1, 2, 4)
    assert_mask_equal(got, np_pairwise(q_valid, kv_valid, lambda a, b: a and b))


def test_padding_mask_from_lengths_under_jit():
    fn = jax.jit(lambda lengths: masks.padding_mask(masks.lengths_to_valid(lengths, 4)))
    lengths = np.array([2, 4], np.int32)
    valid = np.arange(4)[None, :] < lengths[:, None]
    assert_mask_equal(fn(lengths), np_pairwise(valid, valid, lambda a, b: a and b))


@pytest.mark.parametrize("name", ["q_valid", "kv_valid"])
def test_padding_mask_non_bool_raises(name):
    valid = np.ones((2, 3), bool)
    args = {"q_valid": valid, "kv_valid": valid, name: np.ones((2, 3), np.int32)}
    with pytest.raises(TypeError, match=name):
        masks.padding_mask(**args)


@pytest.mark.parametrize("name", ["q_valid", "kv_valid"])
def test_padding_mask_wrong_rank_raises(name):
    valid = np.ones((2, 3), bool)
    args = {"q_valid": valid, "kv_valid": valid, name: np.ones((2, 1, 3), bool)}
    with pytest.raises(ValueError, match=name):
        masks.padding_mask(**args)


def test_padding_mask_batch_mismatch_raises():
    with pytest.raises(ValueError, match=re.escape("(2, 3) and (3, 3)")):
        masks.padding_mask(np.ones((2, 3), bool), np.ones((3, 3), bool))


# ---------------------------------------------------------------------------------------------------------------------
# segment_mask


def test_segment_mask_self_attention():
    ids = np.array([[1, 1, 2, 2, 0], [1, 2, 2, 3, 3]], np.int32)
    assert_mask_equal(masks.segment_mask(ids), np_pairwise(ids, ids, lambda a, b: a == b))


def test_segment_mask_cross_attention():
    q_ids = np.array([[1, 2, 2]], np.int32)
    kv_ids = np.array([[2, 1, 1, 2]], np.int32)
    got = masks.segment_mask(q_ids, kv_ids)
    assert got.shape == (1, 1, 3, 4)
    assert_mask_equal(got, np_pairwise(q_ids, kv_ids, lambda a, b: a == b))


def test_segment_mask_with_causal_mask_for_packed_decoding():
    ids = np.array([[1, 1, 1, 2, 2]], np.int32)
    got = masks.combine_masks(masks.segment_mask(ids), masks.causal_mask(5))
    want = np_pairwise(ids, ids, lambda a, b: a == b) & np_causal(5, 5)
    assert_mask_equal(got, want)


@pytest.mark.parametrize("name", ["q_segment_ids", "kv_segment_ids"])
def test_segment_mask_float_ids_raise(name):
    ids = np.ones((2, 3), np.int32)
    args = {"q_segment_ids": ids, "kv_segment_ids": ids, name: np.ones((2, 3), np.float32)}
    with pytest.raises(TypeError, match=name):
        masks.segment_mask(**args)


@pytest.mark.parametrize("name", ["q_segment_ids", "kv_segment_ids"])
def test_segment_mask_wrong_rank_raises(name):
    ids = np.ones((2, 3), np.int32)
    args = {"q_segment_ids": ids, "kv_segment_ids": ids, name: np.ones((6,), np.int32)}
    with pytest.raises(ValueError, match=name):
        masks.segment_mask(**args)


def test_segment_mask_batch_mismatch_raises():
    with pytest.raises(ValueError, match="same batch size"):
        masks.segment_mask(np.ones((2, 3), np.int32), np.ones((1, 3), np.int32))


# ---------------------------------------------------------------------------------------------------------------------
# block_sparse_mask


@pytest.mark.parametrize(
    ("q_len", "kv_len", "block_size", "window_blocks", "global_blocks"),
    [
        (8, 8, 2, 0, 0),  # block diagonal
        (8, 8, 2, 1, 0),  # banded
        (12, 12, 3, 0, 1),  # global first block + diagonal
        (10, 7, 3, 1, 1),  # lengths not multiples of the block size, T != S
        (6, 12, 2, 2, 2),
        (5, 5, 8, 0, 0),  # one (short) block: everything
    ],
)
def test_block_sparse_mask_window_and_global(q_len, kv_len, block_size, window_blocks, global_blocks):
    got = run_jit(
        masks.block_sparse_mask,
        q_len,
        kv_len,
        block_size=block_size,
        window_blocks=window_blocks,
        global_blocks=global_blocks,
        random_blocks=0,
    )
    assert_mask_equal(got, np_block_sparse(q_len, kv_len, block_size, window_blocks, global_blocks))


def _block_pattern(mask, block_size):
    """[1, 1, T, S] token mask -> [num_q_blocks, num_kv_blocks] block mask, checking each block is constant."""
    m = np.asarray(mask)[0, 0]
    blocks = m[::block_size, ::block_size]
    expanded = np.repeat(np.repeat(blocks, block_size, axis=0), block_size, axis=1)[: m.shape[0], : m.shape[1]]
    np.testing.assert_array_equal(m, expanded, err_msg="the mask is not constant within blocks")
    return blocks


def test_block_sparse_mask_random_blocks_count():
    # 6 query blocks, 4 key blocks, window_blocks=0, global_blocks=0: random blocks are drawn outside the
    # diagonal (as in BigBird), so every row keeps its diagonal block (if it has one) plus exactly
    # `random_blocks` others.
    random_blocks, block_size = 2, 2
    kwargs = dict(block_size=block_size, window_blocks=0, global_blocks=0, random_blocks=random_blocks)
    draw = jax.jit(functools.partial(masks.block_sparse_mask, 12, 8, **kwargs))
    diagonal = np.eye(6, 4, dtype=bool)
    for seed in range(4):
        blocks = _block_pattern(draw(rng=jax.random.key(seed)), block_size)
        assert blocks[diagonal].all()
        np.testing.assert_array_equal((blocks & ~diagonal).sum(-1), random_blocks)


def test_block_sparse_mask_random_blocks_saturate_when_few_blocks_are_left():
    # 3 key blocks, window covers the diagonal and one neighbour: a middle row has nothing left to draw.
    got = masks.block_sparse_mask(
        6, 6, block_size=2, window_blocks=1, global_blocks=0, random_blocks=3, rng=jax.random.key(0)
    )
    assert np.asarray(got).all()


def test_block_sparse_mask_random_blocks_are_added_to_window_and_global():
    kwargs = dict(block_size=2, window_blocks=1, global_blocks=1)
    base = np.asarray(run_jit(masks.block_sparse_mask, 16, 16, random_blocks=0, **kwargs))
    with_random = np.asarray(run_jit(masks.block_sparse_mask, 16, 16, random_blocks=2, rng=jax.random.key(1), **kwargs))
    np.testing.assert_array_equal(base, np_block_sparse(16, 16, **kwargs))
    assert (with_random >= base).all(), "random blocks must only add to the window/global pattern"
    assert (with_random > base).any()


def test_block_sparse_mask_random_blocks_are_deterministic_per_rng():
    draw = jax.jit(
        functools.partial(
            masks.block_sparse_mask, 16, 16, block_size=1, window_blocks=0, global_blocks=0, random_blocks=3
        )
    )
    a, b, c = draw(rng=jax.random.key(0)), draw(rng=jax.random.key(0)), draw(rng=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_block_sparse_mask_random_blocks_are_uniform_over_keys():
    # Query block 4 has no diagonal key block (only 4 key blocks): each key block is drawn with probability 2 / 4.
    draw = jax.jit(
        jax.vmap(
            lambda rng: masks.block_sparse_mask(
                5, 4, block_size=1, window_blocks=0, global_blocks=0, random_blocks=2, rng=rng
            )
        )
    )
    freq = np.asarray(draw(jax.random.split(jax.random.key(0), 400)))[:, 0, 0, 4, :].mean(0)
    np.testing.assert_allclose(freq, 0.5, atol=0.1)


def test_block_sparse_mask_requires_rng_for_random_blocks():
    with pytest.raises(ValueError, match="rng"):
        masks.block_sparse_mask(8, 8, block_size=2, window_blocks=0, global_blocks=0, random_blocks=1)


def test_block_sparse_mask_too_many_random_blocks_raises():
    with pytest.raises(ValueError, match="random_blocks"):
        masks.block_sparse_mask(
            8, 8, block_size=2, window_blocks=0, global_blocks=0, random_blocks=5, rng=jax.random.key(0)
        )


@pytest.mark.parametrize(
    ("name", "value"), [("block_size", 0), ("window_blocks", -1), ("global_blocks", -1), ("random_blocks", -1)]
)
def test_block_sparse_mask_bad_arguments_raise(name, value):
    kwargs = dict(block_size=2, window_blocks=0, global_blocks=0, random_blocks=0)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        masks.block_sparse_mask(8, 8, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# combine_masks


def test_combine_masks_is_and_with_broadcasting():
    causal = masks.causal_mask(3, 4)  # [1, 1, 3, 4]
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    padding = masks.padding_mask(valid[:, :3], valid)  # [2, 1, 3, 4]
    per_head = np.array([True, False])[None, :, None, None]  # [1, 2, 1, 1]
    got = masks.combine_masks(causal, padding, per_head)
    want = np_causal(3, 4) & np_pairwise(valid[:, :3], valid, lambda a, b: a and b) & per_head
    assert got.shape == (2, 2, 3, 4)
    assert_mask_equal(got, want)


def test_combine_masks_under_jit():
    causal = masks.causal_mask(4)
    window = masks.sliding_window_mask(4, window=2, causal=False)
    want = np.asarray(masks.combine_masks(causal, window))
    np.testing.assert_array_equal(jax.jit(masks.combine_masks)(causal, window), want)
    np.testing.assert_array_equal(want, np_sliding_window(4, 4, 2, causal=True))


def test_combine_masks_ignores_none():
    causal = masks.causal_mask(3)
    assert_mask_equal(masks.combine_masks(None, causal, None), np.asarray(causal))


def test_combine_masks_all_none_returns_none():
    assert masks.combine_masks(None, None) is None
    assert masks.combine_masks() is None


def test_combine_masks_float_mask_raises():
    with pytest.raises(TypeError, match=re.escape("masks[1]")):
        masks.combine_masks(masks.causal_mask(3), jnp.ones((1, 1, 3, 3), jnp.float32))


def test_combine_masks_incompatible_shapes_raise():
    with pytest.raises(ValueError, match=re.escape("(1, 1, 3, 4), (1, 1, 3, 5)")):
        masks.combine_masks(masks.causal_mask(3, 4), masks.causal_mask(3, 5))


# ---------------------------------------------------------------------------------------------------------------------
# Eager and jit agree (the other tests mostly run under jit: one fused compile is much cheaper than one per op).


@pytest.mark.parametrize(
    "make",
    [
        lambda: masks.causal_mask(3, 5, offset=1),
        lambda: masks.sliding_window_mask(5, 4, window=2, causal=False, offset=1),
        lambda: masks.no_self_mask(3, 4),
        lambda: masks.block_sparse_mask(7, 9, block_size=2, window_blocks=1, global_blocks=1, random_blocks=0),
        lambda: masks.segment_mask(np.array([[1, 1, 2]], np.int32)),
    ],
    ids=["causal", "sliding_window", "no_self", "block_sparse", "segment"],
)
def test_eager_and_jit_agree(make):
    eager, jitted = make(), jax.jit(make)()
    assert eager.dtype == jitted.dtype == jnp.bool_
    np.testing.assert_array_equal(eager, jitted)
