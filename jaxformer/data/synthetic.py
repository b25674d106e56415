"""Offline sequence-to-sequence toy tasks on digit strings, generated with NumPy from a seed.

    reverse   src 3 1 4 1 5      ->  tgt 5 1 4 1 3
    sort      src 3 1 4 1 5      ->  tgt 1 1 3 4 5
    add       src 1 2 3 + 4 5    ->  tgt 1 6 8            (most significant digit first)

One vocabulary serves every task (`SEQ2SEQ_VOCAB`): PAD = 0, BOS = 1, EOS = 2, digit d = d + 3, "+" = 13.
Reverse and sort never use "+", so a model for them needs only the first 13 ids (`seq2seq_vocab_size`).

The decoder is trained with teacher forcing: it reads `tgt_in` = BOS + target and predicts `tgt_out` =
target + EOS, position by position; `tgt_valid` masks the loss. Same seed, same data; train and test sets
drawn with different seeds may share a few examples (short lengths have few distinct strings).
"""

from __future__ import annotations

import numpy as np

from jaxformer import checks

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
DIGIT_OFFSET = 3  # digit d is token d + 3
PLUS_ID = 13
SEQ2SEQ_VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", *"0123456789", "+")
SEQ2SEQ_TASKS = ("reverse", "sort", "add")
_CHAR_TO_ID = {c: i for i, c in enumerate(SEQ2SEQ_VOCAB) if len(c) == 1}


def seq2seq_vocab_size(name: str) -> int:
    """Ids a model for task `name` must cover: 13 for reverse and sort, 14 for add (its "+")."""
    _check_task(name)
    return len(SEQ2SEQ_VOCAB) if name == "add" else PLUS_ID


def seq2seq_encode(text: str) -> np.ndarray:
    """int32 ids of a string of digits and "+" (no special tokens): "12+3" -> [4, 5, 13, 6]."""
    unknown = sorted({c for c in text if c not in _CHAR_TO_ID})
    if unknown:
        raise ValueError(f"seq2seq_encode: {unknown} are not in the vocabulary; use digits 0-9 and '+' only.")
    return np.array([_CHAR_TO_ID[c] for c in text], np.int32)


def seq2seq_decode(ids, *, strip_special: bool = True) -> str:
    """The string of 1-D token ids.

    With `strip_special` (the default; what to compare with a reference answer) decoding stops at the first EOS
    and drops PAD and BOS; otherwise specials are written out as "<pad>", "<bos>", "<eos>".
    """
    ids = checks.check_int_vector("ids", ids)
    bad = (ids < 0) | (ids >= len(SEQ2SEQ_VOCAB))
    if bad.any():
        raise ValueError(f"`ids` must lie in [0, {len(SEQ2SEQ_VOCAB)}); got {ids[bad][0]}.")
    out = []
    for i in ids.tolist():
        if strip_special and i == EOS_ID:
            break
        if strip_special and i in (PAD_ID, BOS_ID):
            continue
        out.append(SEQ2SEQ_VOCAB[i])
    return "".join(out)


def seq2seq_task(name: str, *, num_examples: int, min_len: int, max_len: int, seed: int) -> dict[str, np.ndarray]:
    """N random examples of a toy task, padded to fixed shapes.

    Args:
      name: "reverse", "sort" or "add".
      num_examples: N.
      min_len, max_len: digits per sequence (reverse, sort) or per operand (add), drawn uniformly from
        [min_len, max_len]. Operands of add have no leading zero (except the number 0 itself).
      seed: non-negative int.

    Returns:
      a dict with
        src      int32 `[N, S]`   source tokens, PAD after the end; S = max_len (add: 2 max_len + 1)
        src_valid bool `[N, S]`
        tgt_in   int32 `[N, T]`   BOS + target, then PAD; T = max_len + 1 (add: max_len + 2)
        tgt_out  int32 `[N, T]`   target + EOS, then PAD
        tgt_valid bool `[N, T]`   True on target + EOS (the positions of tgt_out the loss counts)
    """
    _check_task(name)
    n = checks.check_positive_int("num_examples", num_examples)
    min_len = checks.check_positive_int("min_len", min_len)
    max_len = checks.check_positive_int("max_len", max_len)
    if min_len > max_len:
        raise ValueError(f"`min_len`={min_len} must be <= `max_len`={max_len}.")
    seed = checks.check_nonnegative_int("seed", seed)
    rng = np.random.default_rng((seed, SEQ2SEQ_TASKS.index(name)))

    if name == "add":
        src_digits, src_len, tgt_digits, tgt_len = _addition(rng, n, min_len, max_len)
    else:
        src_len = rng.integers(min_len, max_len + 1, size=n)
        src_digits = rng.integers(0, 10, size=(n, max_len))
        col = np.arange(max_len)
        if name == "reverse":
            tgt_digits = np.take_along_axis(src_digits, np.maximum(src_len[:, None] - 1 - col, 0), axis=1)
        else:  # sort: padding sorts last as 10
            tgt_digits = np.sort(np.where(col < src_len[:, None], src_digits, 10), axis=1)
        tgt_len = src_len
        src_digits = src_digits + DIGIT_OFFSET

    src_valid = np.arange(src_digits.shape[1]) < src_len[:, None]
    src = np.where(src_valid, src_digits, PAD_ID).astype(np.int32)

    t = tgt_digits.shape[1] + 1
    col = np.arange(t)
    body = np.pad(tgt_digits + DIGIT_OFFSET, ((0, 0), (0, 1)))  # [N, T]: the target, left-aligned
    tgt_valid = col < tgt_len[:, None] + 1
    shifted = np.concatenate([np.full((n, 1), BOS_ID), body[:, :-1]], axis=1)
    tgt_in = np.where(tgt_valid, shifted, PAD_ID).astype(np.int32)
    tgt_out = np.where(col < tgt_len[:, None], body, np.where(col == tgt_len[:, None], EOS_ID, PAD_ID))
    return {
        "src": src,
        "src_valid": src_valid,
        "tgt_in": tgt_in,
        "tgt_out": tgt_out.astype(np.int32),
        "tgt_valid": tgt_valid,
    }


def _addition(rng: np.random.Generator, n: int, min_len: int, max_len: int):
    """Digits of "a+b" (tokens, [N, 2 max_len + 1]) and of a + b ([N, max_len + 1]), most significant first.

    Numbers are kept as digit arrays, so any max_len works (no int64 overflow).
    """
    lengths = rng.integers(min_len, max_len + 1, size=(2, n))
    digits = rng.integers(0, 10, size=(2, n, max_len))  # least significant first
    lead = rng.integers(1, 10, size=(2, n))
    col = np.arange(max_len)
    is_lead = (col == lengths[..., None] - 1) & (lengths[..., None] > 1)
    digits = np.where(is_lead, lead[..., None], digits)
    digits = np.where(col < lengths[..., None], digits, 0)

    total = np.zeros((n, max_len + 1), np.int64)  # least significant first
    carry = np.zeros(n, np.int64)
    for i in range(max_len):
        s = digits[0, :, i] + digits[1, :, i] + carry
        total[:, i], carry = s % 10, s // 10
    total[:, max_len] = carry
    nonzero = total != 0
    tgt_len = np.where(nonzero.any(axis=1), max_len + 1 - np.argmax(nonzero[:, ::-1], axis=1), 1)

    def msd_first(d, length):  # [N, W] least-significant-first digits -> most-significant-first, left-aligned
        w = d.shape[1]
        idx = np.clip(length[:, None] - 1 - np.arange(w), 0, w - 1)
        return np.take_along_axis(d, idx, axis=1)

    a = msd_first(digits[0], lengths[0]) + DIGIT_OFFSET
    b = msd_first(digits[1], lengths[1]) + DIGIT_OFFSET
    # Source row: a's digits, "+", b's digits (scattered after the "+"), then padding.
    src = np.full((n, 2 * max_len + 1), PAD_ID, np.int64)
    src[:, :max_len] = np.where(col < lengths[0][:, None], a, PAD_ID)
    src[np.arange(n), lengths[0]] = PLUS_ID
    src[np.arange(n)[:, None], lengths[0][:, None] + 1 + col] = np.where(col < lengths[1][:, None], b, PAD_ID)
    src_len = lengths[0] + 1 + lengths[1]
    return src, src_len, msd_first(total, tgt_len), tgt_len


def _check_task(name) -> None:
    checks.check_choice("seq2seq task", name, SEQ2SEQ_TASKS)
