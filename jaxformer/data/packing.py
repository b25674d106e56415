"""Packing variable-length sequences into fixed-length rows.

Packing puts several short examples in one row of length T instead of padding each to T; `segment_ids` and
`positions` let the model keep them apart (`ops.segment_mask(segment_ids)` combined with `ops.causal_mask`,
position embeddings from `positions`):

    tokens     [[5 6 7 8 9 4 4 0]]      two sequences [5 6 7], [8 9 4 4] and one padding slot
    segment_ids[[1 1 1 2 2 2 2 0]]      1, 2, ... per sequence within its row; 0 = padding
    positions  [[0 1 2 0 1 2 3 0]]      restart at 0 in each segment

Training on a whole corpus packs differently: `data.pipeline.packed_documents` cuts the token stream into rows and
derives the same `segment_ids` / `positions` from document boundaries, without materialising the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

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
