"""Tests for jaxformer.data.packing: packed rows against a plain-Python first-fit reference, packing invariants,
and the shuffled-epoch iterator (permutations, determinism, exact resumption)."""

import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxformer.data import ShuffledBatches, pack_sequences, seq2seq_task


def reference_first_fit(sequences, seq_len):
    """Rows as lists of sequences, by the textbook first-fit loop."""
    rows = []
    for seq in sequences:
        if not seq:
            continue
        for row in rows:
            if sum(map(len, row)) + len(seq) <= seq_len:
                row.append(seq)
                break
        else:
            rows.append([seq])
    return rows


def segments_of(packed):
    """Per row, the list of segments (token lists) in left-to-right order, checking the packing invariants."""
    rows = []
    for tokens, seg, pos in zip(packed["tokens"], packed["segment_ids"], packed["positions"], strict=True):
        ids = [int(s) for s in seg if s]
        n = len(ids)
        # Real tokens first, then padding (segment 0, token 0, position 0).
        assert (seg[:n] > 0).all() and (seg[n:] == 0).all()
        assert (tokens[n:] == 0).all() and (pos[n:] == 0).all()
        # Segment ids run 1, 2, ... in order; positions restart at 0 in each segment.
        row = []
        for k in range(1, (max(ids) if ids else 0) + 1):
            where = np.flatnonzero(seg == k)
            assert where.size and (np.diff(where) == 1).all(), f"segment {k} is empty or not contiguous"
            np.testing.assert_array_equal(pos[where], np.arange(where.size))
            row.append(tokens[where].tolist())
        assert sum(map(len, row)) == n
        rows.append(row)
    return rows


sequences_strategy = st.lists(st.lists(st.integers(1, 50), max_size=10), max_size=25)


@hypothesis.given(sequences=sequences_strategy, seq_len=st.integers(10, 16))
def test_pack_matches_first_fit_reference(sequences, seq_len):
    packed = pack_sequences([np.array(s, np.int64) for s in sequences], seq_len=seq_len)
    rows = segments_of(packed)
    assert rows == reference_first_fit(sequences, seq_len)
    for name in ("tokens", "segment_ids", "positions"):
        assert packed[name].dtype == np.int32 and packed[name].shape == (len(rows), seq_len)
    # Every sequence appears exactly once, whole, in one row, and rows keep the input order.
    flat = [s for row in rows for s in row]
    assert sorted(map(tuple, flat)) == sorted(tuple(s) for s in sequences if s)


def test_pack_example():
    packed = pack_sequences([[5, 6, 7], [8, 9, 4, 4], [1] * 6, [3]], seq_len=8)
    np.testing.assert_array_equal(packed["tokens"], [[5, 6, 7, 8, 9, 4, 4, 3], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 3], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 0, 0]])


def test_pack_pads_rows_to_a_multiple_of_batch_size_with_pad_id():
    packed = pack_sequences([[5, 6], [7, 8, 9]], seq_len=3, batch_size=4, pad_id=11)
    assert packed["tokens"].shape == (4, 3)
    np.testing.assert_array_equal(packed["tokens"], [[5, 6, 11], [7, 8, 9], [11, 11, 11], [11, 11, 11]])
    np.testing.assert_array_equal(packed["segment_ids"][2:], 0)
    assert pack_sequences([], seq_len=3, batch_size=2)["tokens"].shape == (2, 3)
    assert pack_sequences([], seq_len=3)["tokens"].shape == (0, 3)


def test_pack_long_sequences_error_or_split():
    with pytest.raises(ValueError, match=r"`sequences\[1\]` has 5 tokens, more than seq_len=4.*split_long=True"):
        pack_sequences([[1], [1, 2, 3, 4, 5]], seq_len=4)
    packed = pack_sequences([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11]], seq_len=4, split_long=True)
    # Chunks [1..4], [5..8], [9, 10] are separate segments; [11] first-fits next to [9, 10].
    assert segments_of(packed) == [[[1, 2, 3, 4]], [[5, 6, 7, 8]], [[9, 10], [11]]]


def test_pack_errors():
    with pytest.raises(ValueError, match="single 1-D array"):
        pack_sequences(np.arange(5), seq_len=8)
    with pytest.raises(ValueError, match=r"`sequences\[0\]` must be a 1-D array"):
        pack_sequences([[[1, 2]]], seq_len=8)
    with pytest.raises(ValueError, match="`seq_len` must be a positive int"):
        pack_sequences([[1]], seq_len=0)


# -- ShuffledBatches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_each_epoch_is_a_permutation(drop_remainder):
    it = ShuffledBatches(10, batch_size=3, seed=0, drop_remainder=drop_remainder, num_epochs=3)
    assert it.steps_per_epoch == (3 if drop_remainder else 4)
    batches = list(it)
    assert len(batches) == 3 * it.steps_per_epoch
    epochs = [np.concatenate(batches[e * it.steps_per_epoch : (e + 1) * it.steps_per_epoch]) for e in range(3)]
    for e, seen in enumerate(epochs):
        np.testing.assert_array_equal(seen, it.permutation(e)[: seen.size])
        assert np.unique(seen).size == seen.size == (9 if drop_remainder else 10)
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh shuffle each epoch
    if drop_remainder:
        assert all(b.shape == (3,) for b in batches)
    else:
        assert [b.size for b in batches[:4]] == [3, 3, 3, 1]


def test_same_seed_same_order_different_seed_different():
    a = [next(ShuffledBatches(100, batch_size=10, seed=s)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], a[2])


def test_resume_across_an_epoch_boundary():
    run = ShuffledBatches(7, batch_size=2, seed=5)  # 3 batches per epoch, 1 example dropped each epoch
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.state()))
    assert state == {"epoch": 1, "index": 4, "seed": 5}
    resumed = ShuffledBatches(7, batch_size=2, seed=5)
    resumed.restore(state)
    for _ in range(7):
        np.testing.assert_array_equal(next(resumed), next(run))
    assert resumed.state() == run.state()


def test_indexes_arrays_and_mappings():
    data = seq2seq_task("reverse", num_examples=12, min_len=1, max_len=4, seed=0)
    it = ShuffledBatches(data, batch_size=4, seed=2)
    idx = ShuffledBatches(12, batch_size=4, seed=2)
    for _ in range(4):
        batch, i = next(it), next(idx)
        assert batch.keys() == data.keys()
        for k in data:
            np.testing.assert_array_equal(batch[k], data[k][i])
    x = np.arange(24).reshape(12, 2)
    np.testing.assert_array_equal(
        next(ShuffledBatches(x, batch_size=4, seed=2)), x[next(ShuffledBatches(12, batch_size=4, seed=2))]
    )


def test_shuffled_batches_errors():
    with pytest.raises(ValueError, match="3 examples, fewer than batch_size=4"):
        ShuffledBatches(3, batch_size=4, seed=0)
    assert next(ShuffledBatches(3, batch_size=4, seed=0, drop_remainder=False)).size == 3
    with pytest.raises(ValueError, match="at least one example"):
        ShuffledBatches(0, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="same number of rows"):
        ShuffledBatches({"a": np.zeros(3), "b": np.zeros(4)}, batch_size=1, seed=0)
    it = ShuffledBatches(10, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="saved with seed=1 but this iterator has seed=0"):
        it.restore({"epoch": 0, "index": 0, "seed": 1})
    with pytest.raises(ValueError, match=r"lacks keys \['index'\]"):
        it.restore({"epoch": 0, "seed": 0})
    with pytest.raises(ValueError, match="index=11 exceeds the 10 examples"):
        it.restore({"epoch": 0, "index": 11, "seed": 0})
