"""Character-, byte- and subword-level tokenizers: text <-> int32 token ids, storable in a checkpoint as a small dict.

    tok = CharTokenizer.from_text(text)          # vocabulary: the sorted distinct characters of `text`
    ids = tok.encode("To be")                    # int32 [5]
    tok.decode(ids) == "To be"
    tok = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))   # what a checkpoint stores

    tok = SentencePieceTokenizer.train(text, vocab_size=512)   # subword pieces (data/sentencepiece_tokenizer.py)
    tok = HFTokenizer.from_pretrained("gpt2")                 # a checkpoint's tokenizer.json (data/hf_tokenizer.py)
    tok = make_tokenizer("char", train_text)                  # any of them by name (TOKENIZER_NAMES)

The character and byte tokenizers work on whole arrays (NumPy lookups, no Python loop per character): encoding the
1M characters of tiny_shakespeare takes milliseconds; SentencePiece encodes them in one call in well under a second.
`TOKENIZERS` names each kind; `make_tokenizer` builds one by name for `jaxformer prepare` and the text tasks
(`config.data.tokenizer`) alike, and `tokenizer_from_dict` rebuilds one from what a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from jaxformer import checks
from jaxformer.data.hf_tokenizer import HFTokenizer
from jaxformer.data.sentencepiece_tokenizer import SentencePieceTokenizer


@runtime_checkable
class Tokenizer(Protocol):
    """What jaxformer needs from a tokenizer: ids in [0, vocab_size), a lossless round trip, a JSON-able dict."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray:
        """int32 `[len]` token ids."""
        ...

    def decode(self, ids) -> str: ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description with a "type" key; `tokenizer_from_dict` rebuilds the tokenizer from it."""
        ...


def _code_points(text: str) -> np.ndarray:
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


class CharTokenizer:
    """One token per character; id i is the i-th character of `chars`.

    Args:
      chars: the vocabulary, distinct characters in id order (a str or a sequence of 1-character strs).
    """

    type_name: ClassVar[str] = "char"

    def __init__(self, chars):
        if not isinstance(chars, str):
            chars = list(chars)
            if not all(isinstance(c, str) and len(c) == 1 for c in chars):
                message = f"`chars` must be a str or a sequence of 1-character strs; got {chars!r:.80}."
                raise (ValueError if all(isinstance(c, str) for c in chars) else TypeError)(message)
            chars = "".join(chars)
        if not chars:
            raise ValueError("CharTokenizer needs a non-empty vocabulary `chars`; got an empty one.")
        if len(set(chars)) != len(chars):
            seen, dupes = set(), []
            for c in chars:
                if c in seen and c not in dupes:
                    dupes.append(c)
                seen.add(c)
            raise ValueError(f"`chars` must hold distinct characters; {dupes!r} appear more than once.")
        self._chars = chars
        self._codes = _code_points(chars)  # id -> code point
        order = np.argsort(self._codes, kind="stable")
        self._sorted_codes = self._codes[order]  # searchsorted turns code points into ids in one pass
        self._sorted_ids = order.astype(np.int32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is the sorted set of characters of `text` (nanoGPT's char-level)."""
        if not isinstance(text, str) or not text:
            message = f"CharTokenizer.from_text needs a non-empty str; got {text!r:.40}."
            raise (ValueError if isinstance(text, str) else TypeError)(message)
        return cls("".join(sorted(set(text))))

    @property
    def chars(self) -> str:
        return self._chars

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    def encode(self, text: str) -> np.ndarray:
        """int32 `[len(text)]`. Raises ValueError naming the first character outside the vocabulary."""
        codes = _code_points(text)
        pos = np.minimum(np.searchsorted(self._sorted_codes, codes), len(self._sorted_codes) - 1)
        unknown = self._sorted_codes[pos] != codes
        if unknown.any():
            i = int(np.argmax(unknown))
            missing = sorted({chr(c) for c in codes[unknown]})
            raise ValueError(
                f"CharTokenizer.encode: character {text[i]!r} at position {i} is not in the vocabulary "
                f"({len(missing)} unknown characters: {''.join(missing)[:50]!r}). Build the tokenizer from text "
                f"that contains every character, e.g. CharTokenizer.from_text(train_text + valid_text)."
            )
        return self._sorted_ids[pos]

    def decode(self, ids) -> str:
        """The text of 1-D token ids (any integer array or list)."""
        ids = checks.check_token_ids(ids, self.vocab_size)
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "chars": self._chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        _check_type(d, cls.type_name)
        if "chars" not in d:
            raise ValueError(f"CharTokenizer.from_dict needs a 'chars' entry; got keys {sorted(d)}.")
        return cls(d["chars"])

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other._chars == self._chars

    def __hash__(self) -> int:
        return hash((self.type_name, self._chars))

    def __repr__(self) -> str:
        shown = repr(self._chars[:40]) + ("..." if self.vocab_size > 40 else "")
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={shown})"

    def __len__(self) -> int:
        return self.vocab_size


class ByteTokenizer:
    """One token per UTF-8 byte: vocabulary 256, any text encodes, nothing to store but the type.

    Args:
      errors: how `decode` treats byte sequences that are not valid UTF-8 (a model may generate them): "replace"
        (U+FFFD, the default), "strict" (raise) or "ignore" -- as for `bytes.decode`.
    """

    type_name: ClassVar[str] = "byte"
    _ERRORS = ("replace", "strict", "ignore")

    def __init__(self, errors: str = "replace"):
        self.errors = checks.check_choice("ByteTokenizer errors", errors, self._ERRORS)

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        """int32 `[number of UTF-8 bytes of text]`."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = checks.check_token_ids(ids, self.vocab_size)
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors=self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "errors": self.errors}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ByteTokenizer:
        _check_type(d, cls.type_name)
        return cls(d.get("errors", "replace"))

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteTokenizer) and other.errors == self.errors

    def __hash__(self) -> int:
        return hash((self.type_name, self.errors))

    def __repr__(self) -> str:
        return f"ByteTokenizer(errors={self.errors!r})"


# Every tokenizer, by its type name: what `to_dict()` stores under "type" and what `make_tokenizer` is asked for.
TOKENIZERS: dict[str, type] = {
    CharTokenizer.type_name: CharTokenizer,
    ByteTokenizer.type_name: ByteTokenizer,
    SentencePieceTokenizer.type_name: SentencePieceTokenizer,
    HFTokenizer.type_name: HFTokenizer,
}
# The names `make_tokenizer` takes (`jaxformer prepare --tokenizer`, `config.data.tokenizer`): a type name, and for
# "hf" the checkpoint directory or hub id whose tokenizer.json it reads.
TOKENIZER_NAMES = tuple(f"{t}:DIR_OR_ID" if t == HFTokenizer.type_name else t for t in TOKENIZERS)


def _check_type(d, expected: str) -> None:
    if not isinstance(d, Mapping) or d.get("type") != expected:
        got = d.get("type") if isinstance(d, Mapping) else type(d).__name__
        raise ValueError(f"Expected a tokenizer dict with type {expected!r}; got {got!r}.")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuilds a tokenizer from its `to_dict()`, dispatching on d["type"] ("char", "byte", "sentencepiece" or "hf")."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise ValueError(f"`d` must be a tokenizer's to_dict() with a 'type' key; got {d!r:.80}.")
    if d["type"] not in TOKENIZERS:
        raise ValueError(f"Unknown tokenizer type {d['type']!r}; choose one of {sorted(TOKENIZERS)}.")
    return TOKENIZERS[d["type"]].from_dict(d)


def check_tokenizer(name, vocab_size=None, *, argument: str = "tokenizer") -> int | None:
    """Checks a tokenizer name of `TOKENIZER_NAMES` (`argument` names it in errors) and the vocabulary size it needs:
    "sentencepiece" needs a positive int `vocab_size` (returned, as an int); the others have their vocabulary given
    (byte, hf:) or read from the text (char) and ignore it (None is returned)."""
    if not isinstance(name, str):
        raise TypeError(f"`{argument}` must be a tokenizer name, one of {TOKENIZER_NAMES}; got {name!r:.80}.")
    hf = f"{HFTokenizer.type_name}:"
    if not (name in TOKENIZERS and name != HFTokenizer.type_name) and not (name.startswith(hf) and name != hf):
        raise ValueError(f"`{argument}`={name!r}; choose one of {TOKENIZER_NAMES}.")
    if name != SentencePieceTokenizer.type_name:
        return None
    if vocab_size is None:
        raise ValueError(f"`vocab_size` is required with {argument} 'sentencepiece' (e.g. 8000); got None.")
    return checks.check_positive_int("vocab_size", vocab_size)


def make_tokenizer(
    name: str,
    train_text: str | None = None,
    *,
    vocab_size: int | None = None,
    sentencepiece_type: str = "unigram",
    argument: str = "tokenizer",
) -> Tokenizer:
    """The tokenizer `name` (one of `TOKENIZER_NAMES`) names, fitted to `train_text` where it learns a vocabulary.

    "char": the sorted distinct characters of `train_text`; "byte": UTF-8 bytes (no text needed); "sentencepiece":
    trained on `train_text` with `vocab_size` pieces of `sentencepiece_type` ("unigram" or "bpe"); "hf:DIR_OR_ID":
    the tokenizer.json of a checkpoint directory or hub id (`HFTokenizer.from_pretrained`; no text needed).
    `jaxformer prepare` and the text tasks (`config.data.tokenizer`) both make their tokenizer here; `argument`
    names the name's source in errors.
    """
    vocab_size = check_tokenizer(name, vocab_size, argument=argument)
    kind, _, path = name.partition(":")
    if kind == ByteTokenizer.type_name:
        return ByteTokenizer()
    if kind == HFTokenizer.type_name:
        return HFTokenizer.from_pretrained(path)
    if not isinstance(train_text, str):
        raise TypeError(
            f"The {name!r} tokenizer learns its vocabulary from `train_text`, a str; got {train_text!r:.40}."
        )
    if kind == CharTokenizer.type_name:
        return CharTokenizer.from_text(train_text)
    return SentencePieceTokenizer.train(train_text, vocab_size=vocab_size, model_type=sentencepiece_type)
