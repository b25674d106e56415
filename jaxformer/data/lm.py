"""Language-model batches from one long token array, nanoGPT style.

Training: `LMBatcher` draws B random windows of T + 1 tokens per step; inputs are the first T, targets the last
T (the next token at each position). The batch of step s is a pure function of (seed, s), so the iterator's
whole state is the step number: a run resumed from a checkpoint at step s sees exactly the batches an
uninterrupted run would have seen.

    batcher = LMBatcher(tokens, batch_size=64, seq_len=256, seed=0)
    batch = next(batcher)                      # {"inputs": int32 [B, T], "targets": int32 [B, T]}
    checkpoint["data"] = batcher.state()       # {"step": s, "seed": seed}
    batcher.restore(checkpoint["data"])        # next(batcher) is now the batch of step s

Evaluation: `eval_batches` tiles the split with non-overlapping windows, so every token after the first is
predicted exactly once. The last window and the last batch are padded to full shape (one compiled eval step);
`weights` marks the real targets: pass it as the loss mask.

Everything here is NumPy on the host; the training loop puts the batches on devices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxformer import checks


class LMBatcher:
    """Infinite, deterministic, resumable iterator of random language-model windows.

    Window starts are drawn uniformly (with replacement) from every position where T + 1 tokens fit, using a
    NumPy generator seeded by (seed, step).

    Args:
      tokens: int `[N]`, the whole split as one token array (documents joined), N >= seq_len + 1.
      batch_size: B, windows per batch.
      seq_len: T, tokens per window (each window reads T + 1 tokens).
      seed: non-negative int; different seeds give different batch streams.
      step: the step of the first batch (default 0); `restore` sets it from a saved state.
    """

    def __init__(self, tokens, *, batch_size: int, seq_len: int, seed: int, step: int = 0):
        self.tokens = checks.check_token_array("tokens", tokens)
        self.batch_size = checks.check_positive_int("batch_size", batch_size)
        self.seq_len = checks.check_positive_int("seq_len", seq_len)
        self.seed = checks.check_nonnegative_int("seed", seed)
        self.step = checks.check_nonnegative_int("step", step)
        if self.tokens.size < self.seq_len + 1:
            raise ValueError(
                f"`tokens` has {self.tokens.size} tokens but a window needs seq_len + 1 = {self.seq_len + 1}; "
                f"use a smaller seq_len or more data."
            )
        self._window = np.arange(self.seq_len + 1)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The batch of step `step` (does not move the iterator): `inputs` and `targets`, int32 `[B, T]`."""
        step = checks.check_nonnegative_int("step", step)
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, self.tokens.size - self.seq_len, size=self.batch_size)
        windows = self.tokens[starts[:, None] + self._window]  # [B, T + 1]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state(self) -> dict[str, int]:
        """`{"step": the step of the next batch, "seed": seed}`: plain ints, for a checkpoint or JSON."""
        return {"step": self.step, "seed": self.seed}

    def restore(self, state) -> None:
        """Continues from a `state()`: the next batch is the batch of `state["step"]`.

        Raises ValueError if the state was saved with a different seed (the batches would silently differ).
        """
        values = checks.check_state_dict("LMBatcher", state, ("step", "seed"))
        if values["seed"] != self.seed:
            raise ValueError(
                f"LMBatcher.restore: the state was saved with seed={values['seed']} but this batcher has "
                f"seed={self.seed}; build it with the saved seed to resume the same stream of batches."
            )
        self.step = values["step"]

    def __repr__(self) -> str:
        return (
            f"LMBatcher(tokens=[{self.tokens.size}], batch_size={self.batch_size}, seq_len={self.seq_len}, "
            f"seed={self.seed}, step={self.step})"
        )


def num_eval_batches(num_tokens: int, *, batch_size: int, seq_len: int) -> int:
    """How many batches `eval_batches` yields for `num_tokens` tokens: ceil(ceil((N - 1) / T) / B)."""
    num_tokens = checks.check_nonnegative_int("num_tokens", num_tokens)
    batch_size = checks.check_positive_int("batch_size", batch_size)
    seq_len = checks.check_positive_int("seq_len", seq_len)
    windows = -(-max(num_tokens - 1, 0) // seq_len)
    return -(-windows // batch_size)


def eval_batches(tokens, *, batch_size: int, seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic batches of non-overlapping windows that cover the split exactly once.

    Window w reads inputs `tokens[wT : wT + T]` and targets `tokens[wT + 1 : wT + T + 1]`; over all windows the
    targets are tokens 1 .. N - 1, each once (token 0 is never a target: nothing precedes it). The remainder is
    padded, not dropped: the last window's missing positions and the last batch's missing rows hold token 0
    with `weights` False, so every batch has the full shape `[B, T]` and a loss masked by `weights` averages over
    exactly the N - 1 targets of the split.

    Args:
      tokens: int `[N]`, N >= 2.
      batch_size: B.
      seq_len: T.

    Returns:
      an iterator of `{"inputs": int32 [B, T], "targets": int32 [B, T], "weights": bool [B, T]}`; it yields
      `num_eval_batches(N, batch_size=B, seq_len=T)` batches. Call again to iterate again.
    """
    tokens = checks.check_token_array("tokens", tokens)
    batch_size = checks.check_positive_int("batch_size", batch_size)
    seq_len = checks.check_positive_int("seq_len", seq_len)
    if tokens.size < 2:
        raise ValueError(f"`tokens` needs at least 2 tokens (one input, one target); got {tokens.size}.")
    num_batches = num_eval_batches(tokens.size, batch_size=batch_size, seq_len=seq_len)
    return _eval_batches(tokens, batch_size, seq_len, num_batches)


def _eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, num_batches: int):
    num_targets = tokens.size - 1
    # Flat target positions 0 .. B*T-1 of a batch map to token positions; padding beyond N - 1 reads token 0.
    offsets = np.arange(batch_size * seq_len).reshape(batch_size, seq_len)
    for b in range(num_batches):
        pos = b * batch_size * seq_len + offsets  # index of the input token; its target is pos + 1
        valid = pos < num_targets
        yield {
            "inputs": np.where(valid, tokens[np.minimum(pos, num_targets - 1)], 0).astype(np.int32),
            "targets": np.where(valid, tokens[np.minimum(pos + 1, num_targets)], 0).astype(np.int32),
            "weights": valid,
        }
