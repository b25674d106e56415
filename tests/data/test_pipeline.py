"""Tests for jaxformer.data.pipeline (and the in-memory ArrayTokens store it reads): every batch against a NumPy
reference written here, determinism in (seed, step), rows that partition the global batch (multi-host), shuffles
that are permutations, exact resumption from grain's iterator state, eval sources that cover a split exactly once,
and the argument errors."""

import itertools
import json
import sys

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxformer.data import ArrayTokens, pipeline, seq2seq_task

TOKENS = np.arange(1000, dtype=np.int32) % 97  # any token array; values are positions mod 97
STORE = ArrayTokens(TOKENS)


def assert_batches_equal(a, b):
    if isinstance(a, tuple):  # padded_examples: (batch, valid)
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_batches_equal(x, y)
        return
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        return
    np.testing.assert_array_equal(a, b)


def lm_batcher_batch(tokens, batch_size, seq_len, seed, step):
    """The batch of `step` as the old `LMBatcher.batch_at` drew it (and as `random_windows` documents it)."""
    starts = np.random.default_rng((seed, step)).integers(0, tokens.size - seq_len, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


# The three training sources, built the same way from (batch_size, seed, rows, num_batches).
TRAINING_SOURCES = {
    "random_windows": lambda **kw: pipeline.random_windows(STORE, seq_len=8, **kw),
    "packed_documents": lambda **kw: pipeline.packed_documents(
        ArrayTokens(TOKENS[:203], document_starts=[0, 5, 6, 40, 120, 121, 199]), seq_len=8, **kw
    ),  # 25 rows: batches straddle epochs
    "shuffled_examples": lambda **kw: pipeline.shuffled_examples(
        {"x": np.arange(13), "y": np.arange(26).reshape(13, 2)}, **kw
    ),  # 13 examples: batches straddle epochs
}


# -- random_windows -------------------------------------------------------------------------------------------------


@hypothesis.given(
    num_tokens=st.integers(2, 60),
    batch_size=st.integers(1, 6),
    seq_len=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    step=st.integers(0, 10**6),
)
def test_random_windows_are_the_documented_draw(num_tokens, batch_size, seq_len, seed, step):
    hypothesis.assume(num_tokens >= seq_len + 1)
    tokens = np.random.default_rng(num_tokens).integers(0, 1000, num_tokens).astype(np.int32)
    ds = pipeline.random_windows(ArrayTokens(tokens), batch_size=batch_size, seq_len=seq_len, seed=seed)
    batch = ds[step]
    assert set(batch) == {"inputs", "targets"}
    for x in batch.values():
        assert x.shape == (batch_size, seq_len) and x.dtype == np.int32
    assert_batches_equal(batch, lm_batcher_batch(tokens, batch_size, seq_len, seed, step))


def test_random_windows_targets_are_inputs_shifted_by_one():
    tokens = np.arange(500, dtype=np.int32)  # token = position, so a window is a run of consecutive ints
    batch = pipeline.random_windows(ArrayTokens(tokens), batch_size=8, seq_len=16, seed=0)[3]
    np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
    np.testing.assert_array_equal(np.diff(batch["inputs"], axis=1), 1)
    assert batch["inputs"].min() >= 0 and batch["targets"].max() <= 499


def test_every_window_start_is_reachable():
    # N = T + 2 gives exactly two possible windows: starts 0 and 1.
    ds = pipeline.random_windows(ArrayTokens(np.arange(10)), batch_size=64, seq_len=8, seed=1)
    assert set(ds[0]["inputs"][:, 0].tolist()) == {0, 1}
    only = pipeline.random_windows(ArrayTokens(np.arange(9)), batch_size=4, seq_len=8, seed=1)[0]
    np.testing.assert_array_equal(only["inputs"], np.tile(np.arange(8), (4, 1)))
    np.testing.assert_array_equal(only["targets"], np.tile(np.arange(1, 9), (4, 1)))


def test_random_windows_same_seed_same_batches_different_seed_different():
    a, b, c = (pipeline.random_windows(STORE, batch_size=4, seq_len=8, seed=s) for s in (0, 0, 1))
    batches = [a[s] for s in range(3)]
    for step, batch in enumerate(batches):
        assert_batches_equal(batch, b[step])
        assert not np.array_equal(batch["inputs"], c[step]["inputs"])
    assert not np.array_equal(batches[0]["inputs"], batches[1]["inputs"])  # steps differ too
    # The iterator yields the batches of steps 0, 1, 2, ... (element s is the batch of step s).
    it = pipeline.iterator(a)
    for batch in batches:
        assert_batches_equal(next(it), batch)


def test_num_batches_bounds_the_length_default_unbounded():
    for name, build in TRAINING_SOURCES.items():
        unbounded = build(batch_size=3, seed=4)
        assert len(unbounded) == sys.maxsize, name
        bounded = build(batch_size=3, seed=4, num_batches=5)
        assert len(bounded) == 5, name
        got = list(pipeline.iterator(bounded))
        assert len(got) == 5, name
        for step, batch in enumerate(got):
            assert_batches_equal(batch, unbounded[step])


@pytest.mark.parametrize("name", list(TRAINING_SOURCES))
@hypothesis.given(batch_size=st.integers(2, 7), data=st.data())
def test_rows_partition_the_global_batch(name, batch_size, data):
    """The datasets of disjoint row blocks, concatenated, are the full batch: each host of a multi-host run reads
    only its rows, and the hosts together see exactly the batch one process would."""
    cuts = sorted(data.draw(st.sets(st.integers(1, batch_size - 1), min_size=1, max_size=3)))
    blocks = list(itertools.pairwise([0, *cuts, batch_size]))
    build = TRAINING_SOURCES[name]
    full = build(batch_size=batch_size, seed=3)
    parts = [build(batch_size=batch_size, seed=3, rows=slice(a, b)) for a, b in blocks]
    for step in (0, 1, 2, 5, 11):
        want = full[step]
        got = [p[step] for p in parts]
        for (a, b), g in zip(blocks, got, strict=True):
            assert all(x.shape[0] == b - a for x in g.values())
        assert_batches_equal({k: np.concatenate([g[k] for g in got]) for k in want}, want)


# -- Resumption -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_threads,prefetch_buffer_size", [(0, 0), (0, 4), (1, 1), (2, 4)])
@pytest.mark.parametrize("name", list(TRAINING_SOURCES))
def test_resume_sees_the_same_batches(name, num_threads, prefetch_buffer_size):
    build = TRAINING_SOURCES[name]
    opts = dict(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    run = pipeline.iterator(build(batch_size=4, seed=7), **opts)
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.get_state()))  # survives a round trip through a checkpoint
    resumed = pipeline.iterator(build(batch_size=4, seed=7), **opts)  # a fresh process rebuilds everything
    resumed.set_state(state)
    reference = build(batch_size=4, seed=7)
    for step in range(5, 12):
        batch = next(resumed)
        assert_batches_equal(batch, next(run))
        assert_batches_equal(batch, reference[step])


def test_resume_into_other_threads_and_prefetch():
    """The state counts batches, not what the threads read ahead: it restores into any threaded iterator."""
    ds = TRAINING_SOURCES["packed_documents"](batch_size=4, seed=2)
    run = pipeline.iterator(ds, num_threads=2, prefetch_buffer_size=8)
    for _ in range(6):
        next(run)
    resumed = pipeline.iterator(ds, num_threads=0, prefetch_buffer_size=0)
    resumed.set_state(run.get_state())
    for _ in range(4):
        assert_batches_equal(next(resumed), next(run))


def test_resume_with_a_worker_process():
    ds = TRAINING_SOURCES["shuffled_examples"](batch_size=4, seed=7)
    run = pipeline.iterator(ds, num_workers=1)
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.get_state()))
    resumed = pipeline.iterator(ds, num_workers=1)
    resumed.set_state(state)
    for step in range(5, 10):
        batch = next(resumed)
        assert_batches_equal(batch, next(run))
        assert_batches_equal(batch, ds[step])
    run.close()
    resumed.close()


def test_iterator_errors():
    ds = TRAINING_SOURCES["random_windows"](batch_size=2, seed=0)
    for arg in ("num_threads", "prefetch_buffer_size", "num_workers"):
        with pytest.raises(ValueError, match=f"`{arg}` must be a non-negative int; got -1"):
            pipeline.iterator(ds, **{arg: -1})


# -- packed_documents -----------------------------------------------------------------------------------------------


def naive_packed_row(tokens, document_starts, start, seq_len):
    """The packed row of tokens [start, start + T], position by position."""
    is_start = set(int(s) for s in document_starts)
    inputs, targets, weights, segment_ids, positions = [], [], [], [], []
    segment = position = 0
    for j in range(seq_len):
        i = start + j
        if j == 0:
            segment, position = 1, 0
        elif i in is_start:
            segment, position = segment + 1, 0
        else:
            position += 1
        inputs.append(tokens[i])
        targets.append(tokens[i + 1])
        weights.append(i + 1 not in is_start)  # the target opens the next document: nothing here predicts it
        segment_ids.append(segment)
        positions.append(position)
    return {
        "inputs": np.array(inputs, np.int32),
        "targets": np.array(targets, np.int32),
        "weights": np.array(weights, bool),
        "segment_ids": np.array(segment_ids, np.int32),
        "positions": np.array(positions, np.int32),
    }


@st.composite
def documents(draw, max_tokens=80):
    """(tokens, document_starts): a random split of a few documents."""
    n = draw(st.integers(2, max_tokens))
    starts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 12))) | {0})
    tokens = np.random.default_rng(n).integers(0, 500, n).astype(np.int32)
    return tokens, np.array(starts)


@hypothesis.given(docs=documents(), seq_len=st.integers(1, 9), batch_size=st.integers(1, 4), seed=st.integers(0, 99))
def test_packed_documents_match_a_naive_reference(docs, seq_len, batch_size, seed):
    tokens, doc_starts = docs
    num_rows = (tokens.size - 1) // seq_len
    hypothesis.assume(num_rows >= 1)
    positions_store = ArrayTokens(np.arange(tokens.size), document_starts=doc_starts)  # token = position
    store = ArrayTokens(tokens, document_starts=doc_starts)
    where = pipeline.packed_documents(positions_store, batch_size=batch_size, seq_len=seq_len, seed=seed)
    ds = pipeline.packed_documents(store, batch_size=batch_size, seq_len=seq_len, seed=seed)
    for step in range(-(-num_rows // batch_size) + 1):  # an epoch and then some
        batch, starts = ds[step], where[step]["inputs"][:, 0]
        assert set(batch) == {"inputs", "targets", "weights", "segment_ids", "positions"}
        for x in batch.values():
            assert x.shape == (batch_size, seq_len)
        for b, start in enumerate(starts):
            assert start % seq_len == 0 and start < num_rows * seq_len  # rows are cut at multiples of T
            want = naive_packed_row(tokens, doc_starts, int(start), seq_len)
            assert_batches_equal({k: v[b] for k, v in batch.items()}, want)


def test_packed_documents_example():
    # Documents [0, 3), [3, 7), [7, 10); T = 4 gives R = 9 // 4 = 2 rows, at 0 and 4 (token 9 is never a target).
    store = ArrayTokens(np.arange(10) + 100, document_starts=[0, 3, 7])
    batch = pipeline.packed_documents(store, batch_size=2, seq_len=4, seed=0)[0]
    order = np.argsort(batch["inputs"][:, 0])
    batch = {k: v[order] for k, v in batch.items()}
    np.testing.assert_array_equal(batch["inputs"], [[100, 101, 102, 103], [104, 105, 106, 107]])
    np.testing.assert_array_equal(batch["targets"], [[101, 102, 103, 104], [105, 106, 107, 108]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2], [1, 1, 1, 2]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0], [0, 1, 2, 0]])
    np.testing.assert_array_equal(batch["weights"], [[True, True, False, True], [True, True, False, True]])
    assert batch["segment_ids"].dtype == batch["positions"].dtype == np.int32 and batch["weights"].dtype == bool


def row_starts(ds, steps):
    """The row starts the first `steps` batches take, in stream order (ds reads a store with token = position)."""
    return np.concatenate([ds[s]["inputs"][:, 0] for s in range(steps)])


@hypothesis.given(
    num_tokens=st.integers(2, 120), seq_len=st.integers(1, 9), batch_size=st.integers(1, 7), seed=st.integers(0, 99)
)
def test_packed_documents_epoch_takes_every_row_once(num_tokens, seq_len, batch_size, seed):
    num_rows = (num_tokens - 1) // seq_len
    hypothesis.assume(num_rows >= 1)
    store = ArrayTokens(np.arange(num_tokens))
    ds = pipeline.packed_documents(store, batch_size=batch_size, seq_len=seq_len, seed=seed)
    stream = row_starts(ds, -(-3 * num_rows // batch_size))  # three epochs; a batch may straddle two
    for epoch in range(3):
        seen = stream[epoch * num_rows : (epoch + 1) * num_rows]
        np.testing.assert_array_equal(np.sort(seen), np.arange(num_rows) * seq_len)


def test_packed_documents_order_depends_on_epoch_and_seed():
    store = ArrayTokens(np.arange(401))  # 50 rows of 8
    a, b, c = (pipeline.packed_documents(store, batch_size=10, seq_len=8, seed=s) for s in (0, 0, 1))
    stream = row_starts(a, 10)
    np.testing.assert_array_equal(stream, row_starts(b, 10))
    assert not np.array_equal(stream[:50], stream[50:])  # a fresh shuffle each epoch
    assert not np.array_equal(stream[:50], row_starts(c, 5))
    assert not np.array_equal(stream[:50], np.arange(50) * 8)  # shuffled at all


# -- shuffled_examples ----------------------------------------------------------------------------------------------


@hypothesis.given(num_examples=st.integers(1, 12), batch_size=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_shuffled_examples_each_epoch_is_a_permutation(num_examples, batch_size, seed):
    ds = pipeline.shuffled_examples({"i": np.arange(num_examples)}, batch_size=batch_size, seed=seed)
    steps = -(-3 * num_examples // batch_size)
    batches = [ds[s]["i"] for s in range(steps)]
    assert all(b.shape == (batch_size,) for b in batches)  # always full batches, even with B > N
    stream = np.concatenate(batches)
    for epoch in range(3):  # no example is ever skipped: each block of N is one epoch
        np.testing.assert_array_equal(
            np.sort(stream[epoch * num_examples : (epoch + 1) * num_examples]), np.arange(num_examples)
        )


def test_shuffled_examples_same_seed_same_order_different_seed_different():
    a, b, c = (pipeline.shuffled_examples({"i": np.arange(100)}, batch_size=10, seed=s) for s in (0, 0, 1))
    for step in range(12):  # over an epoch boundary
        np.testing.assert_array_equal(a[step]["i"], b[step]["i"])
    assert not np.array_equal(a[0]["i"], c[0]["i"])
    assert not np.array_equal(np.concatenate([a[s]["i"] for s in range(10)]), np.arange(100))
    assert not np.array_equal(a[0]["i"], a[10]["i"])  # a fresh shuffle each epoch


def test_shuffled_examples_index_every_array_alike():
    x = np.arange(12)
    arrays = {
        "x": x,
        "y": 2 * x,
        "z": np.stack([x, -x], axis=1).astype(np.float32),
        "s": np.array(list("abcdefghijkl")),
    }
    ds = pipeline.shuffled_examples(arrays, batch_size=5, seed=2)
    for step in range(6):
        batch = ds[step]
        assert batch.keys() == arrays.keys()
        i = batch["x"]
        np.testing.assert_array_equal(batch["y"], 2 * i)
        np.testing.assert_array_equal(batch["z"], arrays["z"][i])
        assert batch["z"].dtype == np.float32 and batch["z"].shape == (5, 2)
        np.testing.assert_array_equal(batch["s"], arrays["s"][i])
    data = seq2seq_task("reverse", num_examples=12, min_len=1, max_len=4, seed=0)
    batches = pipeline.shuffled_examples(data, batch_size=4, seed=2)
    index = pipeline.shuffled_examples({"i": np.arange(12)}, batch_size=4, seed=2)
    for step in range(4):
        assert_batches_equal(batches[step], {k: v[index[step]["i"]] for k, v in data.items()})


# -- eval_windows ---------------------------------------------------------------------------------------------------


@hypothesis.given(num_tokens=st.integers(2, 200), batch_size=st.integers(1, 5), seq_len=st.integers(1, 17))
def test_eval_windows_cover_the_split_exactly_once(num_tokens, batch_size, seq_len):
    tokens = np.arange(num_tokens, dtype=np.int32) + 1  # nonzero, so padding (0) is distinguishable
    ds = pipeline.eval_windows(ArrayTokens(tokens), batch_size=batch_size, seq_len=seq_len)
    assert len(ds) == pipeline.num_eval_batches(num_tokens, batch_size=batch_size, seq_len=seq_len)
    batches = [ds[i] for i in range(len(ds))]
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
    weights = np.concatenate([b["weights"].reshape(-1) for b in batches])
    assert weights.sum() == num_tokens - 1 and not weights[num_tokens - 1 :].any()


def test_eval_windows_example_and_repeatability():
    store = ArrayTokens(np.arange(1, 12, dtype=np.int32))  # 11 tokens -> 10 targets -> windows of 4: 4 + 4 + 2
    batches = list(pipeline.iterator(pipeline.eval_windows(store, batch_size=2, seq_len=4)))
    assert len(batches) == 2 == pipeline.num_eval_batches(11, batch_size=2, seq_len=4)
    np.testing.assert_array_equal(batches[0]["inputs"], [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(batches[0]["targets"], [[2, 3, 4, 5], [6, 7, 8, 9]])
    np.testing.assert_array_equal(batches[1]["inputs"], [[9, 10, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batches[1]["targets"], [[10, 11, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batches[1]["weights"], [[True, True, False, False], [False] * 4])
    again = list(pipeline.iterator(pipeline.eval_windows(store, batch_size=2, seq_len=4)))
    for a, b in zip(batches, again, strict=True):
        assert_batches_equal(a, b)


def test_num_eval_batches():
    assert pipeline.num_eval_batches(11, batch_size=2, seq_len=4) == 2  # ceil(ceil(10 / 4) / 2)
    assert pipeline.num_eval_batches(10, batch_size=3, seq_len=3) == 1  # 9 targets: exactly 3 windows
    assert pipeline.num_eval_batches(11, batch_size=3, seq_len=3) == 2  # 10 targets: 4 windows
    assert pipeline.num_eval_batches(1, batch_size=2, seq_len=4) == 0
    assert pipeline.num_eval_batches(0, batch_size=2, seq_len=4) == 0
    with pytest.raises(ValueError, match="`num_tokens` must be a non-negative int"):
        pipeline.num_eval_batches(-1, batch_size=2, seq_len=4)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        pipeline.num_eval_batches(10, batch_size=0, seq_len=4)


def test_eval_windows_errors_are_eager():
    with pytest.raises(ValueError, match=r"ArrayTokens\(tokens=\[1\], documents=1\) needs at least 2 tokens"):
        pipeline.eval_windows(ArrayTokens(np.array([5])), batch_size=1, seq_len=4)  # on the call, not on a read
    with pytest.raises(ValueError, match="`seq_len` must be a positive int"):
        pipeline.eval_windows(STORE, batch_size=1, seq_len=0)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        pipeline.eval_windows(STORE, batch_size=-2, seq_len=4)


# -- padded_examples ------------------------------------------------------------------------------------------------


@hypothesis.given(num_examples=st.integers(1, 20), batch_size=st.integers(1, 6))
def test_padded_examples_every_example_once_in_order(num_examples, batch_size):
    x = np.arange(num_examples) + 10
    arrays = {"x": x, "pair": np.stack([x, 3 * x], axis=1)}
    ds = pipeline.padded_examples(arrays, batch_size=batch_size)
    assert len(ds) == -(-num_examples // batch_size)
    batches = list(pipeline.iterator(ds))
    assert len(batches) == len(ds)
    for batch, valid in batches:
        assert batch.keys() == arrays.keys()
        assert batch["x"].shape == valid.shape == (batch_size,) and batch["pair"].shape == (batch_size, 2)
        assert valid.dtype == bool
        np.testing.assert_array_equal(batch["pair"][:, 1], 3 * batch["x"])  # rows stay paired
        np.testing.assert_array_equal(batch["x"][~valid], x[0])  # padding copies example 0
    valid = np.concatenate([v for _, v in batches])
    np.testing.assert_array_equal(valid, np.arange(valid.size) < num_examples)  # real examples first, then padding
    np.testing.assert_array_equal(np.concatenate([b["x"][v] for b, v in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b["pair"][v] for b, v in batches]), arrays["pair"])


# -- Errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRAINING_SOURCES))
def test_training_source_argument_errors(name):
    build = TRAINING_SOURCES[name]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
            build(batch_size=bad, seed=0)
    with pytest.raises(ValueError, match="`seed` must be a non-negative int; got -1"):
        build(batch_size=4, seed=-1)
    with pytest.raises(ValueError, match=r"`seed` must be below 2\*\*32; got 4294967296"):
        build(batch_size=4, seed=2**32)
    build(batch_size=4, seed=2**32 - 1)  # the largest seed is fine
    with pytest.raises(ValueError, match="`num_batches` must be a positive int; got 0"):
        build(batch_size=4, seed=0, num_batches=0)
    with pytest.raises(TypeError, match=r"`rows` must be a slice of the batch rows.*got \[0, 1\]"):
        build(batch_size=4, seed=0, rows=[0, 1])
    for rows in (slice(2, 2), slice(3, 1), slice(0, 5), slice(4, 6), slice(-2, 4), slice(0, 4, 2)):
        with pytest.raises(ValueError, match=r"`rows` must be a non-empty slice\(start, stop\) within \[0, 4\)"):
            build(batch_size=4, seed=0, rows=rows)
    assert len(next(iter(build(batch_size=4, seed=0, rows=slice(3, 4))[0].values()))) == 1  # the last row alone


def test_seq_len_errors():
    for build in (pipeline.random_windows, pipeline.packed_documents):
        with pytest.raises(ValueError, match="`seq_len` must be a positive int; got 0"):
            build(STORE, batch_size=1, seq_len=0, seed=0)


def test_too_few_tokens_name_the_store_and_seq_len():
    store = ArrayTokens(np.arange(8))
    with pytest.raises(
        ValueError, match=r"ArrayTokens\(tokens=\[8\], documents=1\) has 8 tokens but a window needs seq_len \+ 1 = 9"
    ):
        pipeline.random_windows(store, batch_size=1, seq_len=8, seed=0)
    with pytest.raises(
        ValueError, match=r"ArrayTokens\(tokens=\[8\], documents=1\) has 8 tokens, too few for one row of seq_len \+ 1"
    ):
        pipeline.packed_documents(store, batch_size=1, seq_len=8, seed=0)
    # Exactly T + 1 tokens is enough for both: one window, one row.
    pipeline.random_windows(store, batch_size=1, seq_len=7, seed=0)
    pipeline.packed_documents(store, batch_size=1, seq_len=7, seed=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda arrays: pipeline.shuffled_examples(arrays, batch_size=2, seed=0),
        lambda arrays: pipeline.padded_examples(arrays, batch_size=2),
    ],
    ids=["shuffled_examples", "padded_examples"],
)
def test_example_array_errors(build):
    with pytest.raises(ValueError, match=r"same number N > 0 of rows; got \{'a': 3, 'b': 4\}"):
        build({"a": np.zeros(3), "b": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="same number N > 0 of rows"):
        build({"a": np.zeros(0)})
    with pytest.raises(ValueError, match="same number N > 0 of rows"):
        build({"a": np.float32(1.0)})  # a scalar has no rows
    with pytest.raises(ValueError, match="non-empty mapping of names to arrays; got dict"):
        build({})
    with pytest.raises(ValueError, match="non-empty mapping of names to arrays; got ndarray"):
        build(np.arange(4))


# -- ArrayTokens ----------------------------------------------------------------------------------------------------


def test_array_tokens_windows_read_inside_the_store_only():
    store = ArrayTokens(np.arange(10) * 3)
    assert len(store) == 10
    np.testing.assert_array_equal(
        store.windows(np.array([0, 6, 2]), 4), [[0, 3, 6, 9], [18, 21, 24, 27], [6, 9, 12, 15]]
    )
    assert store.windows(np.array([0]), 10).dtype == np.int32
    assert store.windows(np.zeros(0, np.int64), 3).shape == (0, 3)
    for starts, length in (([7], 4), ([-1], 2), ([0, 10], 1), ([0], 11)):
        with pytest.raises(ValueError, match=r"do not fit in the 10 tokens of ArrayTokens"):
            store.windows(np.array(starts), length)  # nothing clamped or padded
    with pytest.raises(ValueError, match="`length` must be a positive int"):
        store.windows(np.array([0]), 0)
    with pytest.raises(ValueError, match=r"`starts` must be a 1-D array of window starts; got shape \(1, 1\)"):
        store.windows(np.array([[0]]), 2)
    with pytest.raises(TypeError, match="`starts` must hold integer window starts; got dtype float64"):
        store.windows(np.array([0.0]), 2)


def test_array_tokens_document_starts():
    np.testing.assert_array_equal(ArrayTokens(np.arange(5)).document_starts(), [0])  # default: one document
    assert ArrayTokens(np.zeros(0, np.int32)).document_starts().size == 0
    starts = ArrayTokens(np.arange(5), document_starts=[0, 2, 4]).document_starts()
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, [0, 2, 4])
    for bad in ([1, 3], [0, 3, 3], [0, 3, 2], [0, 5], [0, 2, 7], []):
        with pytest.raises(ValueError, match="`document_starts` must be strictly increasing, start at 0 and stay"):
            ArrayTokens(np.arange(5), document_starts=bad)
    with pytest.raises(TypeError, match="`document_starts` must hold integer document starts; got dtype float64"):
        ArrayTokens(np.arange(5), document_starts=[0.0, 2.0])
    with pytest.raises(ValueError, match="must be empty for an empty store"):
        ArrayTokens(np.zeros(0, np.int32), document_starts=[0])


def test_array_tokens_token_errors():
    with pytest.raises(ValueError, match="`tokens` must be a 1-D array of token ids"):
        ArrayTokens(TOKENS.reshape(10, 100))
    with pytest.raises(TypeError, match="`tokens` must hold integer token ids; got dtype float32"):
        ArrayTokens(TOKENS.astype(np.float32))
    with pytest.raises(TypeError, match="`tokens` must be a 1-D array of token ids; got None"):
        ArrayTokens(None)
    with pytest.raises(ValueError, match=r"`tokens` must hold token ids in \[0, 2\*\*31\)"):
        ArrayTokens(np.array([0, -1]))
