"""Tests for jaxformer.data.packing: packed rows against a plain-Python first-fit reference and the packing
invariants."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxformer.data import pack_sequences


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
