"""Packing variable-length sequences into fixed-length rows, and a resumable shuffled-epoch iterator.

Packing puts several short examples in one row of length T instead of padding each to T; `segment_ids` and
`positions` let the model keep them apart (`ops.segment_mask(segment_ids)` combined with `ops.causal_mask`,
position embeddings from `positions`):

    tokens     [[5 6 7 8 9 4 4 0]]      two sequences [5 6 7], [8 9 4 4] and one padding slot
    segment_ids[[1 1 1 2 2 2 2 0]]      1, 2, ... per sequence within its row; 0 = padding
    positions  [[0 1 2 0 1 2 3 0]]      restart at 0 in each segment

`ShuffledBatches` walks over N examples in epochs, each a fresh permutation drawn from (seed, epoch); its state
`{"epoch", "index", "seed"}` (index = examples of the epoch already served) is enough to resume exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from jaxformer import checks


def pack_sequences(
    sequences: Sequence,
    *,
    seq_len: int,
    batch_size: int | None = None,
    split_long: bool = False,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Greedy first-fit packing of token sequences into rows of length T.

    Sequences are taken in the given order; each goes into the first row that still has room for all of it,
    or opens a new row. A sequence is never split across rows, so every segment lies in one row. Empty
    sequences take no room and get no segment.

    Args:
      sequences: R0 1-D integer arrays (or lists) of token ids, of any lengths.
      seq_len: T, the row length.
      batch_size: if given, append all-padding rows until the number of rows is a multiple of B, so that the
        rows reshape to `[R / B, B, T]` batches.
      split_long: a sequence longer than T is an error (False, the default: for seq2seq data truncation
        changes the task) or is cut into chunks of T tokens, each packed as its own segment with positions
        restarting at 0 (True: the usual choice for language-model pre-training on documents).
      pad_id: token id of the padding.

    Returns:
      `{"tokens", "segment_ids", "positions"}`, each int32 `[R, T]`.
    """
    seq_len = checks.check_positive_int("seq_len", seq_len)
    if batch_size is not None:
        batch_size = checks.check_positive_int("batch_size", batch_size)
    if isinstance(sequences, np.ndarray) and sequences.ndim == 1 and sequences.dtype != object:
        raise ValueError("`sequences` must be a sequence of 1-D token arrays; got a single 1-D array. Wrap it: [x].")

    pieces = []
    for i, seq in enumerate(sequences):
        arr = checks.check_token_array(f"sequences[{i}]", seq)
        if arr.size > seq_len and not split_long:
            raise ValueError(
                f"`sequences[{i}]` has {arr.size} tokens, more than seq_len={seq_len}; raise seq_len, filter or "
                f"truncate long sequences, or pass split_long=True to cut them into chunks of seq_len."
            )
        pieces.extend(arr[j : j + seq_len] for j in range(0, arr.size, seq_len))

    # First fit: `room[r]` is the free space left in row r; argmax finds the first row where the piece fits.
    room = np.zeros(0, np.int64)
    row_of = np.empty(len(pieces), np.int64)
    for k, piece in enumerate(pieces):
        fits = room >= piece.size
        r = int(np.argmax(fits)) if fits.any() else None
        if r is None:
            r = room.size
            room = np.append(room, seq_len)
        room[r] -= piece.size
        row_of[k] = r

    num_rows = room.size
    if batch_size is not None:
        num_rows = -(-max(num_rows, 1) // batch_size) * batch_size
    tokens = np.full((num_rows, seq_len), pad_id, np.int32)
    segment_ids = np.zeros((num_rows, seq_len), np.int32)
    positions = np.zeros((num_rows, seq_len), np.int32)
    fill = np.zeros(num_rows, np.int64)  # next free column of each row
    count = np.zeros(num_rows, np.int32)  # segments placed in each row so far
    for piece, r in zip(pieces, row_of, strict=True):
        start, n = fill[r], piece.size
        count[r] += 1
        tokens[r, start : start + n] = piece
        segment_ids[r, start : start + n] = count[r]
        positions[r, start : start + n] = np.arange(n)
        fill[r] += n
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


class ShuffledBatches:
    """Deterministic, resumable iterator of shuffled mini-batches over N examples, epoch after epoch.

    Epoch e visits the examples in the order of a permutation drawn from (seed, epoch); consecutive batches
    take B examples of it at a time. With `drop_remainder` (the default: every batch has the same shape, so
    the train step compiles once) the last N mod B examples of each epoch are skipped -- a different few each
    epoch; otherwise the last batch of an epoch is smaller.

    Args:
      data: N (yields int64 index arrays `[B]`), an array with N rows (yields `data[idx]`), or a mapping of
        names to arrays with N rows each (yields a dict of `array[idx]`, e.g. the output of `seq2seq_task`).
      batch_size: B.
      seed: non-negative int.
      drop_remainder: see above.
      num_epochs: stop after this many epochs; None (default) iterates forever.
    """

    def __init__(self, data, *, batch_size: int, seed: int, drop_remainder: bool = True, num_epochs: int | None = None):
        self.data, self.num_examples = _examples(data)
        self.batch_size = checks.check_positive_int("batch_size", batch_size)
        self.seed = checks.check_nonnegative_int("seed", seed)
        self.drop_remainder = bool(drop_remainder)
        self.num_epochs = None if num_epochs is None else checks.check_positive_int("num_epochs", num_epochs)
        if self.num_examples == 0:
            raise ValueError("ShuffledBatches needs at least one example; `data` has 0.")
        if self.drop_remainder and self.num_examples < self.batch_size:
            raise ValueError(
                f"ShuffledBatches has {self.num_examples} examples, fewer than batch_size={self.batch_size}, so "
                f"no full batch; lower batch_size or pass drop_remainder=False."
            )
        self.epoch = 0
        self.index = 0
        self._perm, self._perm_epoch = None, None  # the current epoch's permutation, drawn once per epoch

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch `epoch` visits the examples: int64 `[N]`."""
        epoch = checks.check_nonnegative_int("epoch", epoch)
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        epoch_len = self.steps_per_epoch * self.batch_size if self.drop_remainder else self.num_examples
        if self.index >= epoch_len:  # also catches an index restored from a run with a larger batch
            self.epoch, self.index = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        if self._perm_epoch != self.epoch:
            self._perm, self._perm_epoch = self.permutation(self.epoch), self.epoch
        idx = self._perm[self.index : min(self.index + self.batch_size, epoch_len)]
        self.index += idx.size
        if isinstance(self.data, Mapping):
            return {k: v[idx] for k, v in self.data.items()}
        return idx if self.data is None else self.data[idx]

    def state(self) -> dict[str, int]:
        """`{"epoch", "index" (examples of that epoch already served), "seed"}`: plain ints for a checkpoint."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def restore(self, state) -> None:
        """Continues from a `state()`. Raises ValueError if it was saved with a different seed."""
        values = checks.check_state_dict("ShuffledBatches", state, ("epoch", "index", "seed"))
        if values["seed"] != self.seed:
            raise ValueError(
                f"ShuffledBatches.restore: the state was saved with seed={values['seed']} but this iterator has "
                f"seed={self.seed}; build it with the saved seed to resume the same stream of batches."
            )
        if values["index"] > self.num_examples:
            raise ValueError(
                f"ShuffledBatches.restore: state index={values['index']} exceeds the {self.num_examples} examples "
                f"of an epoch; the state comes from a different dataset."
            )
        self.epoch, self.index = values["epoch"], values["index"]

    def __repr__(self) -> str:
        return (
            f"ShuffledBatches(num_examples={self.num_examples}, batch_size={self.batch_size}, seed={self.seed}, "
            f"epoch={self.epoch}, index={self.index})"
        )


def _examples(data) -> tuple[np.ndarray | Mapping[str, np.ndarray] | None, int]:
    """(data to index, N) for `ShuffledBatches`'s `data` argument."""
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        return None, checks.check_nonnegative_int("data", data)
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("`data` is an empty mapping; give it arrays with one row per example.")
        arrays = {k: np.asarray(v) for k, v in data.items()}
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"Every array in `data` must have the same number of rows N; got {sizes}.")
        return arrays, next(iter(sizes.values()))
    arr = np.asarray(data)
    if arr.ndim == 0:
        raise ValueError(f"`data` must be a number of examples, an array or a mapping of arrays; got {data!r:.80}.")
    return arr, arr.shape[0]
