"""Tests for jaxformer.data.lm: determinism, shifted targets, exact resumption, exact coverage of eval windows."""

import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxformer.data import LMBatcher, eval_batches, num_eval_batches

TOKENS = np.arange(1000, dtype=np.int32) % 97  # any token array; values are positions mod 97


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_shapes_and_shifted_targets():
    tokens = np.arange(500, dtype=np.int32)  # token = position, so a window is a run of consecutive ints
    batch = LMBatcher(tokens, batch_size=8, seq_len=16, seed=0).batch_at(3)
    assert set(batch) == {"inputs", "targets"}
    for x in batch.values():
        assert x.shape == (8, 16) and x.dtype == np.int32
    np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
    np.testing.assert_array_equal(np.diff(batch["inputs"], axis=1), 1)
    assert batch["inputs"].min() >= 0 and batch["targets"].max() <= 499


def test_every_window_start_is_reachable():
    # N = T + 2 gives exactly two possible windows: starts 0 and 1.
    batcher = LMBatcher(np.arange(10), batch_size=64, seq_len=8, seed=1)
    starts = batcher.batch_at(0)["inputs"][:, 0]
    assert set(starts.tolist()) == {0, 1}
    only = LMBatcher(np.arange(9), batch_size=4, seq_len=8, seed=1).batch_at(0)
    np.testing.assert_array_equal(only["inputs"], np.tile(np.arange(8), (4, 1)))


def test_same_seed_same_batches_different_seed_different():
    a = LMBatcher(TOKENS, batch_size=4, seq_len=8, seed=0)
    b = LMBatcher(TOKENS, batch_size=4, seq_len=8, seed=0)
    c = LMBatcher(TOKENS, batch_size=4, seq_len=8, seed=1)
    batches_a = [next(a) for _ in range(3)]
    for step, batch in enumerate(batches_a):
        assert_batches_equal(batch, next(b))
        assert_batches_equal(batch, a.batch_at(step))  # batch_at is pure: same batch, iterator does not move
        assert not np.array_equal(batch["inputs"], next(c)["inputs"])
    assert not np.array_equal(batches_a[0]["inputs"], batches_a[1]["inputs"])  # steps differ too
    assert a.step == 3


def test_resume_sees_the_same_batches():
    run = LMBatcher(TOKENS, batch_size=4, seq_len=8, seed=7)
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.state()))  # survives a round trip through a checkpoint
    assert state == {"step": 5, "seed": 7}
    resumed = LMBatcher(TOKENS, batch_size=4, seq_len=8, seed=7)
    resumed.restore(state)
    for _ in range(4):
        assert_batches_equal(next(resumed), next(run))


def test_restore_accepts_numpy_scalars_and_checks_seed():
    batcher = LMBatcher(TOKENS, batch_size=2, seq_len=4, seed=3)
    batcher.restore({"step": np.array(12), "seed": np.int64(3)})  # as a restored checkpoint may hold them
    assert batcher.step == 12 and isinstance(batcher.step, int)
    with pytest.raises(ValueError, match="saved with seed=4 but this batcher has seed=3"):
        batcher.restore({"step": 0, "seed": 4})
    with pytest.raises(ValueError, match=r"lacks keys \['seed'\]"):
        batcher.restore({"step": 0})
    with pytest.raises(ValueError, match="non-negative int"):
        batcher.restore({"step": -1, "seed": 3})


def test_batcher_errors():
    with pytest.raises(ValueError, match="`tokens` has 8 tokens but a window needs seq_len \\+ 1 = 9"):
        LMBatcher(np.arange(8), batch_size=1, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int; got 0"):
        LMBatcher(TOKENS, batch_size=0, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="`seed` must be a non-negative int"):
        LMBatcher(TOKENS, batch_size=1, seq_len=8, seed=-1)
    with pytest.raises(ValueError, match="1-D"):
        LMBatcher(TOKENS.reshape(10, 100), batch_size=1, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="integer"):
        LMBatcher(TOKENS.astype(np.float32), batch_size=1, seq_len=8, seed=0)


@hypothesis.given(num_tokens=st.integers(2, 200), batch_size=st.integers(1, 5), seq_len=st.integers(1, 17))
def test_eval_batches_cover_the_split_exactly_once(num_tokens, batch_size, seq_len):
    tokens = np.arange(num_tokens, dtype=np.int32) + 1  # nonzero, so padding (0) is distinguishable
    batches = list(eval_batches(tokens, batch_size=batch_size, seq_len=seq_len))
    assert len(batches) == num_eval_batches(num_tokens, batch_size=batch_size, seq_len=seq_len)
    for b in batches:
        assert set(b) == {"inputs", "targets", "weights"}
        assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (batch_size, seq_len)
        assert b["inputs"].dtype == b["targets"].dtype == np.int32 and b["weights"].dtype == bool
        np.testing.assert_array_equal(b["inputs"][~b["weights"]], 0)
        np.testing.assert_array_equal(b["targets"][~b["weights"]], 0)
    inputs = np.concatenate([b["inputs"][b["weights"]] for b in batches])
    targets = np.concatenate([b["targets"][b["weights"]] for b in batches])
    # Row-major order of valid positions walks the split: inputs are tokens 0..N-2, targets tokens 1..N-1.
    np.testing.assert_array_equal(inputs, tokens[:-1])
    np.testing.assert_array_equal(targets, tokens[1:])
    # Padding only at the end: every batch but the last is full, and windows do not overlap.
    assert all(b["weights"].all() for b in batches[:-1])
    assert batches[-1]["weights"][0, 0]


def test_eval_batches_example_and_repeatability():
    tokens = np.arange(1, 12, dtype=np.int32)  # 11 tokens -> 10 targets -> windows of 4: 4 + 4 + 2
    batches = list(eval_batches(tokens, batch_size=2, seq_len=4))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[0]["inputs"], [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(batches[1]["inputs"], [[9, 10, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batches[1]["targets"], [[10, 11, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batches[1]["weights"], [[True, True, False, False], [False] * 4])
    again = list(eval_batches(tokens, batch_size=2, seq_len=4))
    for a, b in zip(batches, again, strict=True):
        assert_batches_equal(a, b)


def test_eval_batches_errors_are_eager():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        eval_batches(np.array([5]), batch_size=1, seq_len=4)  # raised on the call, not on first next()
    with pytest.raises(ValueError, match="`seq_len` must be a positive int"):
        eval_batches(TOKENS, batch_size=1, seq_len=0)
