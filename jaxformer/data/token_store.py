"""A split of a tokenized corpus as one long token stream with random access: in memory or on disk.

    store = ArrayTokens(tokenizer.encode(text))             # a small corpus, in memory
    store = data.open_prepared("prepared/").split("train")  # ArrayRecord shards written by `jaxformer prepare`
    len(store)                                              # N tokens
    store.windows(np.array([0, 100]), 257)                  # int32 [2, 257]: tokens[s : s + 257] of each start
    store.document_starts()                                 # int64 [D]: where each document begins (0 first)

The training input (`data.pipeline`) only ever asks a store for windows, so a corpus never has to fit in memory:
a store on disk reads just the records a window covers.
"""

from __future__ import annotations

import abc

import numpy as np

from jaxformer import checks


class TokenStore(abc.ABC):
    """N token ids in a fixed order (the documents of a split, joined), readable by position."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """N, the number of tokens."""

    @abc.abstractmethod
    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 `[B, length]`: row b is tokens `[starts[b], starts[b] + length)`.

        Raises ValueError when a window does not lie inside [0, N) (nothing is clamped or padded).
        """

    @abc.abstractmethod
    def document_starts(self) -> np.ndarray:
        """int64 `[D]`: the sorted positions where documents begin; the first is 0 (empty store: `[]`)."""

    def check_windows(self, starts, length: int) -> tuple[np.ndarray, int]:
        """(starts as int64 `[B]`, length) after checking that every window lies inside the store."""
        length = checks.check_positive_int("length", length)
        starts = checks.check_int_vector("starts", starts, "window starts").astype(np.int64, copy=False)
        if starts.size and (starts.min() < 0 or starts.max() + length > len(self)):
            raise ValueError(
                f"windows of length {length} at starts in [{starts.min()}, {starts.max()}] do not fit in the "
                f"{len(self)} tokens of {self!r}; a start must lie in [0, {len(self) - length}]."
            )
        return starts, length


class ArrayTokens(TokenStore):
    """A token store held in memory.

    Args:
      tokens: int `[N]` token ids.
      document_starts: int `[D]` sorted starts of the documents in `tokens` (first 0); default one document.
    """

    def __init__(self, tokens, document_starts=None):
        self.tokens = checks.check_token_array("tokens", tokens)
        if document_starts is None:
            document_starts = [0] if self.tokens.size else []
        self._document_starts = check_document_starts(document_starts, self.tokens.size)

    def __len__(self) -> int:
        return int(self.tokens.size)

    def windows(self, starts, length: int) -> np.ndarray:
        starts, length = self.check_windows(starts, length)
        return self.tokens[starts[:, None] + np.arange(length)]

    def document_starts(self) -> np.ndarray:
        return self._document_starts

    def __repr__(self) -> str:
        return f"ArrayTokens(tokens=[{len(self)}], documents={self._document_starts.size})"


def check_document_starts(starts, num_tokens: int) -> np.ndarray:
    """int64 `[D]` document starts: strictly increasing, first 0, all < num_tokens (none for an empty store)."""
    arr = checks.check_int_vector("document_starts", starts, "document starts").astype(np.int64, copy=False)
    if num_tokens == 0:
        if arr.size:
            raise ValueError(f"`document_starts` must be empty for an empty store; got {arr.size} starts.")
        return arr
    if arr.size == 0 or arr[0] != 0 or np.any(np.diff(arr) <= 0) or arr[-1] >= num_tokens:
        raise ValueError(
            f"`document_starts` must be strictly increasing, start at 0 and stay below the {num_tokens} tokens; "
            f"got {arr[:5].tolist()}{'...' if arr.size > 5 else ''} ({arr.size} starts)."
        )
    return arr
