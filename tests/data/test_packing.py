"""Packing variable-length examples (conversations) into rows: `pipeline.pack_rows`, `packed_examples`,
`eval_packed_examples`."""

import numpy as np
import pytest

from jaxformer.data import pipeline


def random_examples(n: int, seed: int = 0, low: int = 2, high: int = 20) -> pipeline.Examples:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(low, high + 1))
        out.append((rng.integers(1, 50, size=length), rng.random(length) < 0.5))
    return pipeline.Examples.from_list(out)


def test_pack_rows_places_every_item_once_within_capacity():
    sizes = np.random.default_rng(0).integers(1, 33, size=500)
    rows = pipeline.pack_rows(sizes, 32, seed=3)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(500))
    assert max(sum(sizes[i] for i in row) for row in rows) <= 32
    # best-fit decreasing is within a few percent of the lower bound ceil(sum / capacity)
    assert len(rows) <= 1.05 * np.ceil(sizes.sum() / 32) + 1


def test_pack_rows_depends_on_the_seed_only_through_ties():
    sizes = np.array([5, 3, 3, 3, 2, 8, 1])
    a, b = pipeline.pack_rows(sizes, 8, seed=0), pipeline.pack_rows(sizes, 8, seed=1)
    assert sorted(map(len, a)) == sorted(map(len, b))
    assert sorted(sum(sizes[list(r)]) for r in a) == sorted(sum(sizes[list(r)]) for r in b)
    assert a == pipeline.pack_rows(sizes, 8, seed=0)  # deterministic


def test_pack_rows_is_at_least_90_percent_full_on_a_chat_like_length_mix():
    """Log-normal lengths (median ~ a quarter of the row, a long tail up to the row): the acceptance's >= 90%."""
    rng = np.random.default_rng(0)
    sizes = np.clip(rng.lognormal(np.log(512), 0.8, size=5000), 16, 2048).astype(np.int64)
    rows = pipeline.pack_rows(sizes, 2048, seed=0)
    assert sizes.sum() / (len(rows) * 2048) >= 0.9


@pytest.mark.parametrize(
    ("sizes", "capacity", "match"),
    [
        (np.array([3, 9]), 8, r"1\.\.8 slots; got sizes 3\.\.9"),
        (np.array([0, 2]), 8, r"got sizes 0\.\.2"),
        (np.array([], np.int64), 8, "non-empty int vector"),
        (np.array([1.5]), 8, "non-empty int vector"),
    ],
)
def test_pack_rows_refuses_items_that_cannot_be_placed(sizes, capacity, match):
    with pytest.raises(ValueError, match=match):
        pipeline.pack_rows(sizes, capacity)


def test_packed_examples_lay_out_each_example_whole_with_its_own_segment_positions_and_weights():
    examples = random_examples(40)
    key = lambda tokens, learned: (tuple(tokens.tolist()), tuple(learned.tolist()))
    want = sorted(key(*examples.example(i)) for i in range(len(examples)))
    ds = pipeline.packed_examples(examples, batch_size=4, seq_len=24, seed=0)
    num_rows = len(pipeline.pack_rows(examples.lengths - 1, 24, seed=0))
    seen = []
    for r in range(num_rows):  # one epoch: every row once
        batch = ds[r // 4]
        assert {k: v.shape for k, v in batch.items()} == {k: (4, 24) for k in batch}
        row = r % 4
        seg = batch["segment_ids"][row]
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
            tokens = np.append(batch["inputs"][row, where], batch["targets"][row, where][-1])
            np.testing.assert_array_equal(batch["positions"][row, where], np.arange(len(where)))
            # the weights are the example's own mask shifted onto its targets; the first token is never a target
            seen.append(key(tokens, np.append(False, batch["weights"][row, where])))
        pad = seg == 0
        assert not batch["weights"][row, pad].any() and not batch["inputs"][row, pad].any()
        assert not pad[: (~pad).sum()].any()  # padding only at the end
    first_free = [key(t, np.append(False, m[1:])) for t, m in (examples.example(i) for i in range(len(examples)))]
    assert sorted(seen) == sorted(first_free)  # every example once per epoch
    assert len(want) == len(seen)


def test_packed_examples_are_deterministic_and_split_by_rows():
    examples = random_examples(30)
    full = pipeline.packed_examples(examples, batch_size=4, seq_len=24, seed=5)
    half = pipeline.packed_examples(examples, batch_size=4, seq_len=24, seed=5, rows=slice(2, 4))
    for step in (0, 3, 11):
        a, b = full[step], half[step]
        for key in a:
            np.testing.assert_array_equal(a[key][2:], b[key])
    other = pipeline.packed_examples(examples, batch_size=4, seq_len=24, seed=6)
    assert not all(np.array_equal(full[s]["inputs"], other[s]["inputs"]) for s in range(4))


def test_eval_packed_examples_cover_every_example_once_then_pad_whole_rows():
    examples = random_examples(25, seed=1)
    batches = list(pipeline.eval_packed_examples(examples, batch_size=3, seq_len=24))
    weights = sum(int(b["weights"].sum()) for b in batches)
    assert weights == sum(int(examples.example(i)[1][1:].sum()) for i in range(len(examples)))
    segments = sum(int(b["segment_ids"][r].max()) for b in batches for r in range(3))
    assert segments == len(examples)
    assert not batches[-1]["segment_ids"][-1].any() or len(pipeline.pack_rows(examples.lengths - 1, 24)) % 3 == 0


def test_examples_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"examples\[1\] must be \(tokens \[L\], learned \[L\]\) with L >= 2"):
        pipeline.Examples.from_list([(np.arange(3), np.ones(3, bool)), (np.arange(1), np.ones(1, bool))])
    with pytest.raises(ValueError, match="empty"):
        pipeline.Examples.from_list([])
    with pytest.raises(TypeError, match=r"data\.pipeline\.Examples"):
        pipeline.packed_examples([(np.arange(3), np.ones(3, bool))], batch_size=1, seq_len=4, seed=0)
