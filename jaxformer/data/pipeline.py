"""Every batch jaxformer trains or evaluates on is an element of a `grain.MapDataset` (Grain, as in MaxText).

Training datasets are indexed by step: element s is the batch of step s (0-based), a pure function of (seed, s),
and holds only the rows of the global batch that this process feeds (`rows`, from `sharding.process_rows`), so
each process of a multi-host run reads only its own rows and the processes together see exactly the batch one
process would. `iterator` turns a dataset into grain's checkpointable iterator, read ahead by threads (and worker
processes where they help); its `get_state()` goes into the orbax checkpoint, so a resumed run continues with
exactly the batches of an uninterrupted one.

    store = ArrayTokens(tokens)                                                  # or open_prepared(dir).split(...)
    train = random_windows(store, batch_size=64, seq_len=256, seed=0)            # MapDataset of batches
    batches = iterator(train)                                                    # grain DatasetIterator
    batch = next(batches)            # {"inputs": int32 [B, T], "targets": int32 [B, T]}
    state = batches.get_state()      # saved by grain's orbax handler (training/checkpoints.py)

Training sources:
  random_windows     B windows of T + 1 tokens at uniform random starts (nanoGPT): inputs / targets.
  packed_documents   the split cut into rows of T + 1 tokens, globally shuffled each epoch; documents meeting in a
                     row are kept apart by `segment_ids` / `positions`, and `weights` drops the targets that
                     cross into the next document.
  shuffled_examples  in-memory arrays with one row per example (toy seq2seq, digits), shuffled each epoch.
  packed_examples    variable-length examples (conversations) packed whole into rows of T by best-fit
                     decreasing, the rows shuffled each epoch; segment ids / positions keep them apart, `weights`
                     holds each example's own per-token loss mask.
Evaluation sources (finite, in order, padded to full batches so one eval step compiles):
  eval_windows       every token of a split predicted once.
  eval_packed_examples  every example once, packed as for training, rows in order.
  padded_examples    every example once, with a bool `[B]` of the real ones.
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
from collections.abc import Mapping

import grain
import numpy as np

from jaxformer import checks
from jaxformer.data.token_store import TokenStore


def random_windows(
    store: TokenStore,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    rows: slice | None = None,
    num_batches: int | None = None,
) -> grain.MapDataset:
    """Batches of random language-model windows: element s is `{"inputs", "targets"}`, int32 `[b, T]`.

    The B window starts of step s are drawn uniformly from [0, N - T) by a NumPy generator seeded with (seed, s);
    window b reads tokens `[start_b, start_b + T]`, inputs are its first T tokens and targets its last T. The
    process reads only windows `rows` (b = rows.stop - rows.start of them).

    Args:
      store: the split's tokens, N >= T + 1.
      batch_size: B, windows in the global batch.
      seq_len: T.
      seed: non-negative int.
      rows: this process's rows of the global batch (default all).
      num_batches: length of the dataset (default: unbounded, `sys.maxsize`).
    """
    _check_store(store)
    batch_size, seq_len, seed, rows, length = _check_common(batch_size, seq_len, seed, rows, num_batches)
    if len(store) < seq_len + 1:
        raise ValueError(
            f"{store!r} has {len(store)} tokens but a window needs seq_len + 1 = {seq_len + 1}; use a smaller "
            f"seq_len or more data."
        )
    return grain.MapDataset.range(length).map(_RandomWindows(store, batch_size, seq_len, seed, rows))


def packed_documents(
    store: TokenStore,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    rows: slice | None = None,
    num_batches: int | None = None,
) -> grain.MapDataset:
    """Batches of packed rows: element s is `{"inputs", "targets", "weights", "segment_ids", "positions"}` `[b, T]`.

    Row r of the split reads tokens `[rT, rT + T]` (R = (N - 1) // T rows, each target predicted once per
    epoch); the rows are globally shuffled (grain's `shuffle`, reseeded every epoch) and step s takes rows
    sB .. sB + B - 1 of that order. In a row, `segment_ids` number the documents 1, 2, ... (`ops.segment_mask`
    keeps them apart), `positions` restart at 0 where a document starts (or the row does), and `weights` is
    False where the target is the first token of the next document (nothing in the row predicts it).
    """
    _check_store(store)
    batch_size, seq_len, seed, rows, length = _check_common(batch_size, seq_len, seed, rows, num_batches)
    num_rows = (len(store) - 1) // seq_len
    if num_rows < 1:
        raise ValueError(
            f"{store!r} has {len(store)} tokens, too few for one row of seq_len + 1 = {seq_len + 1}; use a smaller "
            f"seq_len or more data."
        )
    order = grain.MapDataset.range(num_rows).shuffle(_shuffle_seed(seed)).repeat()
    return grain.MapDataset.range(length).map(_PackedRows(store, order, batch_size, seq_len, rows))


def shuffled_examples(
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    seed: int,
    rows: slice | None = None,
    num_batches: int | None = None,
) -> grain.MapDataset:
    """Batches of in-memory examples: element s is `{name: array[idx]}` for the examples idx of step s.

    The N examples (rows of every array) are globally shuffled (grain's `shuffle`, reseeded every epoch) and
    repeated; step s takes examples sB .. sB + B - 1 of that stream, so a batch may straddle two epochs and no
    example is ever skipped.
    """
    arrays = _check_arrays(arrays)
    n = len(next(iter(arrays.values())))
    batch_size, _, seed, rows, length = _check_common(batch_size, 1, seed, rows, num_batches)
    order = grain.MapDataset.range(n).shuffle(_shuffle_seed(seed)).repeat()
    return grain.MapDataset.range(length).map(_ShuffledRows(arrays, order, batch_size, rows))


def packed_examples(
    examples: Examples,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    rows: slice | None = None,
    num_batches: int | None = None,
) -> grain.MapDataset:
    """Batches of packed variable-length examples: element s is `{"inputs", "targets", "weights", "segment_ids",
    "positions"}` `[b, T]`.

    Example i (tokens `x_i [L_i]`, bool `learned_i [L_i]`) fills L_i - 1 consecutive slots of one row: inputs
    `x_i[:-1]`, targets `x_i[1:]`, weights `learned_i[1:]` (a target is learned where its token is). Examples are
    never split: `pack_rows` assigns them to rows once (best-fit decreasing, ties broken by a `seed` shuffle), and
    grain reshuffles the rows every epoch (as `packed_documents`). In a row, `segment_ids` number the examples
    1, 2, ... and are 0 on the padding after them, `positions` restart at 0 for every example, and padding has
    token 0 and weight False: a model given the segment ids and positions computes on each example exactly what
    it computes on the example alone (`ops.segment_mask`).
    """
    if not isinstance(examples, Examples):
        raise TypeError(f"`examples` must be a data.pipeline.Examples; got {type(examples).__name__}.")
    batch_size, seq_len, seed, rows, length = _check_common(batch_size, seq_len, seed, rows, num_batches)
    plan = pack_rows(examples.lengths - 1, seq_len, seed=seed)
    order = grain.MapDataset.range(len(plan)).shuffle(_shuffle_seed(seed)).repeat()
    return grain.MapDataset.range(length).map(_PackedExamples(examples, plan, order, batch_size, seq_len, rows))


def eval_packed_examples(examples: Examples, *, batch_size: int, seq_len: int) -> grain.MapDataset:
    """Every example once, packed as `packed_examples` packs them (seed 0), its rows in order; the last batch is
    filled with padding rows (weights False), so every batch has the full shape `[B, T]`."""
    if not isinstance(examples, Examples):
        raise TypeError(f"`examples` must be a data.pipeline.Examples; got {type(examples).__name__}.")
    batch_size = checks.check_positive_int("batch_size", batch_size)
    seq_len = checks.check_positive_int("seq_len", seq_len)
    plan = pack_rows(examples.lengths - 1, seq_len, seed=0)
    return grain.MapDataset.range(-(-len(plan) // batch_size)).map(_EvalPackedRows(examples, plan, batch_size, seq_len))


def pack_rows(sizes: np.ndarray, capacity: int, *, seed: int = 0) -> list[tuple[int, ...]]:
    """Best-fit decreasing bin packing: item i (of size `sizes[i]`, 1 <= size <= capacity) goes, largest first,
    into the open row with the least room that still fits it (a new row when none does). Returns the rows as
    tuples of item indices. Items of equal size are taken in the order of a `seed` permutation, so which short
    items share a row varies with the seed. Typically within a few percent of the fewest rows possible."""
    capacity = checks.check_positive_int("capacity", capacity)
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or not len(sizes) or not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(f"`sizes` must be a non-empty int vector; got {sizes.dtype} {sizes.shape}.")
    if sizes.min() < 1 or sizes.max() > capacity:
        raise ValueError(
            f"Every item must fill 1..{capacity} slots; got sizes {sizes.min()}..{sizes.max()} (truncate longer "
            "examples first)."
        )
    perm = np.random.default_rng(seed).permutation(len(sizes))
    order = perm[np.argsort(-sizes[perm], kind="stable")]
    rows: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # room left -> rows with that much room
    rooms: list[int] = []  # sorted distinct keys of by_room
    for i in order:
        size = int(sizes[i])
        k = bisect.bisect_left(rooms, size)
        if k < len(rooms):  # the fullest row that still fits
            room = rooms[k]
            r = by_room[room].pop()
            if not by_room[room]:
                del by_room[room], rooms[k]
        else:
            room, r = capacity, len(rows)
            rows.append([])
        rows[r].append(int(i))
        left = room - size
        if left:
            if left not in by_room:
                bisect.insort(rooms, left)
                by_room[left] = []
            by_room[left].append(r)
    return [tuple(row) for row in rows]


@dataclasses.dataclass(frozen=True)
class Examples:
    """Variable-length examples over flat arrays: example i is `tokens[starts[i]:ends[i]]` with its bool `learned`
    mask (True on the tokens a model learns to predict). The arrays may be memory-mapped (a prepared chat corpus,
    `data.open_prepared_chat`): examples are read a slice at a time, and `truncated` shortens or drops examples by
    changing `ends` / the index arrays only, never copying tokens. Every example has at least 2 tokens."""

    tokens: np.ndarray  # int32 [N]
    learned: np.ndarray  # bool [N]
    starts: np.ndarray  # int64 [E]
    ends: np.ndarray  # int64 [E]

    def __post_init__(self):
        if np.shape(self.tokens) != np.shape(self.learned) or np.ndim(self.tokens) != 1:
            raise ValueError(
                f"`tokens` and `learned` must be vectors of one length; got {np.shape(self.tokens)} and "
                f"{np.shape(self.learned)}."
            )
        lengths = np.asarray(self.ends) - np.asarray(self.starts)
        if np.shape(self.starts) != np.shape(self.ends) or not len(lengths):
            raise ValueError(f"`starts` and `ends` must be non-empty and of one length; got {np.shape(self.starts)}.")
        if lengths.min() < 2 or np.min(self.starts) < 0 or np.max(self.ends) > len(self.tokens):
            raise ValueError(
                f"Every example must have 2 or more tokens inside the {len(self.tokens)} tokens; got lengths "
                f"{lengths.min()}..{lengths.max()}."
            )

    @classmethod
    def from_list(cls, examples: list[tuple[np.ndarray, np.ndarray]]) -> Examples:
        """From (tokens int `[L_i]`, learned bool `[L_i]`) pairs (L_i >= 2), copied into flat arrays."""
        if not examples:
            raise ValueError("`examples` is empty: there is nothing to pack.")
        lengths = []
        for i, (ids, learned) in enumerate(examples):
            if np.ndim(ids) != 1 or np.shape(ids) != np.shape(learned) or len(ids) < 2:
                raise ValueError(
                    f"examples[{i}] must be (tokens [L], learned [L]) with L >= 2; got shapes {np.shape(ids)} and "
                    f"{np.shape(learned)}."
                )
            lengths.append(len(ids))
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate([np.asarray(ids, np.int32) for ids, _ in examples])
        learned = np.concatenate([np.asarray(m, bool) for _, m in examples])
        return cls(tokens, learned, bounds[:-1], bounds[1:])

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        """int64 `[E]`: tokens per example."""
        return np.asarray(self.ends) - np.asarray(self.starts)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.starts[i], self.ends[i]
        return np.asarray(self.tokens[lo:hi]), np.asarray(self.learned[lo:hi])

    def truncated(self, keep: np.ndarray, lengths: np.ndarray) -> Examples:
        """The examples `keep` (int indices), example keep[j] cut to its first `lengths[j]` tokens (no copy of the
        token arrays)."""
        keep, lengths = np.asarray(keep, np.int64), np.asarray(lengths, np.int64)
        if keep.shape != lengths.shape or (lengths > self.lengths[keep]).any():
            raise ValueError("`lengths` must give one length per kept example, each at most the example's own.")
        starts = np.asarray(self.starts)[keep]
        return Examples(self.tokens, self.learned, starts, starts + lengths)


def eval_windows(store: TokenStore, *, batch_size: int, seq_len: int) -> grain.MapDataset:
    """Batches of non-overlapping windows that predict every token of the split after the first exactly once.

    Window w reads inputs `tokens[wT : wT + T]` and targets `tokens[wT + 1 : wT + T + 1]`; the remainder is
    padded, not dropped: missing positions and rows hold token 0 with `weights` False, so every batch has the
    full shape `[B, T]` and a loss masked by `weights` averages over exactly the N - 1 targets.

    Returns:
      a MapDataset of `num_eval_batches(N, ...)` elements `{"inputs", "targets": int32 [B, T], "weights": bool}`.
    """
    _check_store(store)
    batch_size = checks.check_positive_int("batch_size", batch_size)
    seq_len = checks.check_positive_int("seq_len", seq_len)
    if len(store) < 2:
        raise ValueError(f"{store!r} needs at least 2 tokens (one input, one target); got {len(store)}.")
    num_batches = num_eval_batches(len(store), batch_size=batch_size, seq_len=seq_len)
    return grain.MapDataset.range(num_batches).map(_EvalWindows(store, batch_size, seq_len))


def num_eval_batches(num_tokens: int, *, batch_size: int, seq_len: int) -> int:
    """How many batches `eval_windows` has for `num_tokens` tokens: ceil(ceil((N - 1) / T) / B)."""
    num_tokens = checks.check_nonnegative_int("num_tokens", num_tokens)
    batch_size = checks.check_positive_int("batch_size", batch_size)
    seq_len = checks.check_positive_int("seq_len", seq_len)
    windows = -(-max(num_tokens - 1, 0) // seq_len)
    return -(-windows // batch_size)


def padded_examples(arrays: Mapping[str, np.ndarray], *, batch_size: int) -> grain.MapDataset:
    """Every example once, in order, in batches of exactly `batch_size` (one compiled eval step): elements are
    (batch, example_valid bool `[B]`); the last batch is filled with copies of example 0, marked invalid."""
    arrays = _check_arrays(arrays)
    batch_size = checks.check_positive_int("batch_size", batch_size)
    n = len(next(iter(arrays.values())))
    return grain.MapDataset.range(-(-n // batch_size)).map(_PaddedRows(arrays, batch_size))


def iterator(
    dataset: grain.MapDataset, *, num_threads: int = 2, prefetch_buffer_size: int = 4, num_workers: int = 0
) -> grain.DatasetIterator:
    """Grain's checkpointable iterator over `dataset`: `num_threads` threads read `prefetch_buffer_size` batches
    ahead; `num_workers` > 0 adds worker processes (worth it when building a batch costs more Python than a
    step, e.g. heavy tokenization; the datasets here are cheap). `get_state()` / `set_state()` resume exactly,
    whatever the threads and workers read ahead."""
    num_threads = checks.check_nonnegative_int("num_threads", num_threads)
    prefetch_buffer_size = checks.check_nonnegative_int("prefetch_buffer_size", prefetch_buffer_size)
    num_workers = checks.check_nonnegative_int("num_workers", num_workers)
    ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
    if num_workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside `app.run` nobody parsed them
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(ds)


def _check_common(batch_size, seq_len, seed, rows, num_batches):
    batch_size = checks.check_positive_int("batch_size", batch_size)
    seq_len = checks.check_positive_int("seq_len", seq_len)
    seed = checks.check_nonnegative_int("seed", seed)
    if seed >= 2**32:  # grain's shuffle takes 32-bit seeds
        raise ValueError(f"`seed` must be below 2**32; got {seed}.")
    rows = check_rows(rows, batch_size)
    length = sys.maxsize if num_batches is None else checks.check_positive_int("num_batches", num_batches)
    return batch_size, seq_len, seed, rows, length


def _check_store(store) -> None:
    if not isinstance(store, TokenStore):
        raise TypeError(
            f"`store` must be a data.TokenStore (data.ArrayTokens(tokens), or open_prepared(dir).split(name)); got "
            f"{type(store).__name__}."
        )


def _shuffle_seed(seed: int) -> int:
    """The seed handed to grain's shuffle, which reseeds epoch e with (its seed + e): hashing the user's seed
    first keeps seed s + 1 from replaying seed s's orders one epoch later."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def check_rows(rows: slice | None, batch_size: int) -> slice:
    """`rows` as a non-empty `slice(start, stop)` inside [0, batch_size) (None: every row)."""
    if rows is None:
        return slice(0, batch_size)
    if not isinstance(rows, slice):
        raise TypeError(f"`rows` must be a slice of the batch rows (sharding.process_rows); got {rows!r}.")
    start, stop, step = rows.indices(batch_size)
    if step != 1 or start >= stop or (rows.start, rows.stop) != (start, stop):
        raise ValueError(f"`rows` must be a non-empty slice(start, stop) within [0, {batch_size}); got {rows}.")
    return slice(start, stop)


def _check_arrays(arrays) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError(f"`arrays` must be a non-empty mapping of names to arrays; got {type(arrays).__name__}.")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values() or 0 in sizes.values():
        raise ValueError(f"Every array in `arrays` must have the same number N > 0 of rows; got {sizes}.")
    return arrays


# The per-step functions are picklable objects (not closures) so that grain's worker processes can run them.


@dataclasses.dataclass(frozen=True)
class _RandomWindows:
    store: TokenStore
    batch_size: int
    seq_len: int
    seed: int
    rows: slice

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.store) - self.seq_len, size=self.batch_size)[self.rows]
        windows = self.store.windows(starts, self.seq_len + 1)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def _positions_in_order(order: grain.MapDataset, batch_size: int, rows: slice, step: int) -> np.ndarray:
    """The entries of the shuffled, repeated `order` that rows `rows` of the batch of `step` take: int64 `[b]`."""
    first = step * batch_size
    return np.fromiter((order[first + r] for r in range(rows.start, rows.stop)), np.int64)


@dataclasses.dataclass(frozen=True)
class _PackedRows:
    store: TokenStore
    order: grain.MapDataset
    batch_size: int
    seq_len: int
    rows: slice

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        t = self.seq_len
        starts = _positions_in_order(self.order, self.batch_size, self.rows, step) * t
        windows = self.store.windows(starts, t + 1)  # [b, T + 1]
        doc_starts = self.store.document_starts()
        pos = starts[:, None] + np.arange(t + 1)
        doc = np.searchsorted(doc_starts, pos, side="right") - 1  # the document of every token
        segment_ids = doc[:, :t] - doc[:, :1] + 1
        positions = pos[:, :t] - np.maximum(doc_starts[doc[:, :t]], starts[:, None])
        return {
            "inputs": windows[:, :-1],
            "targets": windows[:, 1:],
            "weights": doc[:, 1:] == doc[:, :t],
            "segment_ids": segment_ids.astype(np.int32),
            "positions": positions.astype(np.int32),
        }


def _pack_batch(examples: Examples, plan, row_ids, seq_len: int) -> dict[str, np.ndarray]:
    """The rows `plan[r]` for r in `row_ids` (-1: a padding row) laid out as `packed_examples` describes."""
    b = len(row_ids)
    out = {
        "inputs": np.zeros((b, seq_len), np.int32),
        "targets": np.zeros((b, seq_len), np.int32),
        "weights": np.zeros((b, seq_len), bool),
        "segment_ids": np.zeros((b, seq_len), np.int32),
        "positions": np.zeros((b, seq_len), np.int32),
    }
    for row, r in enumerate(row_ids):
        at = 0
        for segment, i in enumerate(plan[r] if r >= 0 else (), start=1):
            tokens, learned = examples.example(i)
            n = len(tokens) - 1
            out["inputs"][row, at : at + n] = tokens[:-1]
            out["targets"][row, at : at + n] = tokens[1:]
            out["weights"][row, at : at + n] = learned[1:]
            out["segment_ids"][row, at : at + n] = segment
            out["positions"][row, at : at + n] = np.arange(n)
            at += n
    return out


@dataclasses.dataclass(frozen=True)
class _PackedExamples:
    examples: Examples
    plan: list
    order: grain.MapDataset
    batch_size: int
    seq_len: int
    rows: slice

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        row_ids = _positions_in_order(self.order, self.batch_size, self.rows, step)
        return _pack_batch(self.examples, self.plan, row_ids, self.seq_len)


@dataclasses.dataclass(frozen=True)
class _EvalPackedRows:
    examples: Examples
    plan: list
    batch_size: int
    seq_len: int

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        row_ids = index * self.batch_size + np.arange(self.batch_size)
        row_ids = np.where(row_ids < len(self.plan), row_ids, -1)
        return _pack_batch(self.examples, self.plan, row_ids, self.seq_len)


@dataclasses.dataclass(frozen=True)
class _ShuffledRows:
    arrays: dict
    order: grain.MapDataset
    batch_size: int
    rows: slice

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        idx = _positions_in_order(self.order, self.batch_size, self.rows, step)
        return {k: v[idx] for k, v in self.arrays.items()}


@dataclasses.dataclass(frozen=True)
class _EvalWindows:
    store: TokenStore
    batch_size: int
    seq_len: int

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        num_targets = len(self.store) - 1
        # Flat target positions of the batch map to token positions; padding beyond N - 1 reads token 0.
        first = index * self.batch_size * self.seq_len
        starts = first + self.seq_len * np.arange(self.batch_size)
        pos = starts[:, None] + np.arange(self.seq_len)  # the input token of each target (target = pos + 1)
        valid = pos < num_targets
        # Read the real part of every row from the store: rows wholly in the padding read nothing.
        lengths = np.clip(num_targets + 1 - starts, 0, self.seq_len + 1)
        tokens = np.zeros((self.batch_size, self.seq_len + 1), np.int32)
        full = lengths == self.seq_len + 1
        if full.any():
            tokens[full] = self.store.windows(starts[full], self.seq_len + 1)
        for b in np.flatnonzero(~full & (lengths > 1)):  # the one partly filled row
            tokens[b, : lengths[b]] = self.store.windows(starts[b : b + 1], int(lengths[b]))[0]
        return {
            "inputs": np.where(valid, tokens[:, :-1], 0).astype(np.int32),
            "targets": np.where(valid, tokens[:, 1:], 0).astype(np.int32),
            "weights": valid,
        }


@dataclasses.dataclass(frozen=True)
class _PaddedRows:
    arrays: dict
    batch_size: int

    def __call__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        n = len(next(iter(self.arrays.values())))
        idx = index * self.batch_size + np.arange(self.batch_size)
        valid = idx < n
        idx = np.where(valid, idx, 0)
        return {k: v[idx] for k, v in self.arrays.items()}, valid
