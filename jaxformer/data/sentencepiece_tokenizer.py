"""Subword tokenizers from SentencePiece (unigram or BPE), trained in memory: `SentencePieceTokenizer`.

    tok = SentencePieceTokenizer.train(text, vocab_size=512)  # the sentencepiece package: jaxformer[experiments]
    tok.decode(tok.encode(text)) == text

The `sentencepiece` package is imported on first use, so that `import jaxformer.data` does not need it.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from jaxformer import checks


def _import_sentencepiece():
    """The `sentencepiece` module, imported on first use so that jaxformer.data does not need it."""
    try:
        import sentencepiece
    except ImportError as e:
        raise ImportError(
            "SentencePieceTokenizer needs the `sentencepiece` package: pip install 'jaxformer[experiments]'."
        ) from e
    return sentencepiece


_SPM_WHITESPACE = "\u2581"  # "▁": SentencePiece's marker for a space inside pieces


class SentencePieceTokenizer:
    """Subword tokens from a SentencePiece model (unigram or BPE), trained in memory on a text.

        tok = SentencePieceTokenizer.train(text, vocab_size=512)             # or model_type="bpe"
        tok.decode(tok.encode(text)) == text

    What round-trips: a model from `train` keeps the text as it is (no Unicode normalization, spaces kept and never
    collapsed, no space added in front, "\\n" a token of its own), so `decode(encode(text)) == text` for any text
    whose characters all occur in the training text (with `character_coverage=1.0`, the default) -- newlines, runs
    of spaces, tabs and leading/trailing spaces included -- and, when trained with `byte_fallback=True`, for any
    text at all (unseen characters become their UTF-8 byte tokens). `encode` never loses text silently: it raises
    a ValueError for a character (or, with model_type "word", a word) outside the vocabulary, and for the
    character "\u2581" (U+2581), which SentencePiece uses to write spaces and would decode as a space. `decode` of
    the unknown-piece id `unk_id` (0) gives " \u2047 ", and byte tokens that do not form valid UTF-8 decode to U+FFFD.
    No ids are reserved for padding or begin/end of sequence: id 0 is `<unk>`, id 1 is "\\n", the rest are pieces
    (with byte_fallback the 256 byte tokens `<0x00>`..`<0xFF>` come next).

    `encode` takes the whole text in one call (newlines are tokens, not sentence breaks): the 1M characters of
    tiny_shakespeare encode in about 0.1 s (unigram) or 0.8 s (BPE).

    Args:
      model_proto: a serialized SentencePiece model (`ModelProto` bytes), as `train` makes and `model_proto`
        returns. A model trained elsewhere works too, but round-trips only as well as its own settings allow.
    """

    type_name: ClassVar[str] = "sentencepiece"
    MODEL_TYPES: ClassVar[tuple[str, ...]] = ("unigram", "bpe", "char", "word")
    # Trainer options that `train` sets itself: the lossless round trip, the id layout, determinism and training
    # in memory depend on them.
    _FIXED_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {
            "input", "model_prefix", "sentence_iterator", "model_writer", "vocab_size", "model_type",
            "character_coverage", "byte_fallback", "normalization_rule_name", "normalization_rule_tsv",
            "remove_extra_whitespaces", "add_dummy_prefix", "escape_whitespaces", "user_defined_symbols",
            "control_symbols", "unk_id", "bos_id", "eos_id", "pad_id", "num_threads", "input_sentence_size",
            "shuffle_input_sentence", "treat_whitespace_as_suffix",
        }
    )  # fmt: skip

    def __init__(self, model_proto: bytes):
        if isinstance(model_proto, bytearray | memoryview):
            model_proto = bytes(model_proto)
        if not isinstance(model_proto, bytes) or not model_proto:
            raise ValueError(
                f"`model_proto` must be the non-empty bytes of a serialized SentencePiece model; "
                f"got {type(model_proto).__name__} {model_proto!r:.40}."
            )
        spm = _import_sentencepiece()
        try:
            sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as e:
            raise ValueError(
                f"`model_proto` ({len(model_proto)} bytes) is not a serialized SentencePiece model: {e}"
            ) from e
        self._model_proto = model_proto
        self._sp = sp
        self._unk_id = sp.unk_id()

    @classmethod
    def train(
        cls,
        text: str,
        *,
        vocab_size: int,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        byte_fallback: bool = False,
        **trainer_options,
    ) -> SentencePieceTokenizer:
        """Trains a SentencePiece model on `text`, in memory (no file is read or written).

        The sentences are the non-empty lines of `text`; "\\n" is a piece of its own. Training is deterministic:
        the same text and arguments give the same model bytes (one thread, every line used, in order).

        Args:
          text: the training text.
          vocab_size: the number of pieces, `<unk>` and "\\n" included. At least the number of distinct characters
            of `text` + 2 (+ 256 with byte_fallback); at most what the text supports (SentencePiece's error, raised
            as a ValueError, says the limit). With model_type "char" it is an upper bound: the vocabulary is the
            characters of `text`, the most frequent ones if there are too many.
          model_type: "unigram" (the default), "bpe", "char" or "word". "word" pieces are whole words seen in
            training: another word makes `encode` raise.
          character_coverage: the share of the characters of `text` to cover; below 1.0 the rarest characters
            get no piece (so `encode` raises on them unless byte_fallback).
          byte_fallback: add the 256 UTF-8 byte tokens so that any text encodes (not with model_type "word",
            whose byte fallback does not round-trip spaces).
          **trainer_options: further `sentencepiece.SentencePieceTrainer.train` options, e.g.
            `max_sentencepiece_length=16` or `split_digits=True`; options that this method sets itself (the
            normalization, whitespace, special-id, threading and input options) are refused.
        """
        spm = _import_sentencepiece()
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
        vocab_size = checks.check_positive_int("vocab_size", vocab_size)
        checks.check_choice("model_type", model_type, cls.MODEL_TYPES)
        character_coverage = checks.check_real(
            "character_coverage", character_coverage, low=0.0, high=1.0, low_open=True
        )
        byte_fallback = checks.check_flag("byte_fallback", byte_fallback)
        if byte_fallback and model_type == "word":
            raise ValueError(
                "`byte_fallback`=True does not round-trip with `model_type`='word' (its byte fallback writes spaces "
                "as '\u2581'); use model_type 'unigram' or 'bpe'."
            )
        fixed = sorted(cls._FIXED_OPTIONS & trainer_options.keys())
        if fixed:
            raise ValueError(
                f"SentencePieceTokenizer.train sets the trainer options {fixed} itself (the lossless round trip, "
                f"the id layout and determinism depend on them); got them in `trainer_options`."
            )
        lines = [line for line in text.split("\n") if line]
        if not lines:
            raise ValueError(f"SentencePieceTokenizer.train needs a text with a non-empty line; got {text!r:.40}.")
        longest = max(len(line.encode("utf-8")) for line in lines)
        options = {
            # Keep the text as it is, so that decode(encode(text)) == text: no NFKC, spaces neither collapsed
            # nor stripped nor added in front of the text; runs of spaces (indentation) may be pieces.
            "normalization_rule_name": "identity",
            "remove_extra_whitespaces": False,
            "add_dummy_prefix": False,
            "allow_whitespace_only_pieces": True,
            # Newlines are not in the training sentences (the lines) but are a piece, id 1, in any text.
            "user_defined_symbols": ["\n"],
            # Ids: 0 is <unk>; no pad / bos / eos.
            "unk_id": 0,
            "pad_id": -1,
            "bos_id": -1,
            "eos_id": -1,
            # Deterministic: one thread, all sentences in order, none skipped for length.
            "num_threads": 1,
            "input_sentence_size": 0,
            "shuffle_input_sentence": False,
            "max_sentence_length": max(4192, longest),
            "minloglevel": 2,  # quiet
        }
        options.update(trainer_options)
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=float(character_coverage),
                byte_fallback=byte_fallback,
                **options,
            )
        except RuntimeError as e:
            reason = str(e).rsplit("] ", 1)[-1].strip() or str(e)
            if "ocabulary size" in str(e):
                raise ValueError(
                    f"`vocab_size`={vocab_size} does not fit this text ({len(text)} characters, {len(set(text))} "
                    f"distinct): SentencePiece says: {reason}"
                ) from e
            raise ValueError(f"SentencePiece training failed ({model_type=}, {vocab_size=}): {reason}") from e
        return cls(writer.getvalue())

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._model_proto

    @property
    def processor(self):
        """The underlying `sentencepiece.SentencePieceProcessor`."""
        return self._sp

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def unk_id(self) -> int:
        """The id of `<unk>` (0 for a model from `train`)."""
        return self._unk_id

    @property
    def byte_fallback(self) -> bool:
        """Whether the model has the 256 UTF-8 byte tokens (then any text encodes)."""
        i = self._sp.piece_to_id("<0x00>")
        return i != self._unk_id and bool(self._sp.is_byte(i))

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` ("\u2581" stands for a space)."""
        return self._sp.id_to_piece(int(checks.check_token_ids([i], self.vocab_size)[0]))

    def encode(self, text: str) -> np.ndarray:
        """int32 `[number of pieces]`, the whole text in one call. Raises ValueError naming the first character
        (or word) that is not in the vocabulary, or the character U+2581 (see the class docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
        if _SPM_WHITESPACE in text:
            i = text.index(_SPM_WHITESPACE)
            raise ValueError(
                f"SentencePieceTokenizer.encode: character {_SPM_WHITESPACE!r} (U+2581) at position {i} cannot be "
                f"encoded: SentencePiece writes spaces with it, so it would decode as a space."
            )
        ids = np.asarray(self._sp.encode(text), dtype=np.int32)
        unknown = ids == self._unk_id
        if unknown.any():
            k = int(np.argmax(unknown))
            i = len(self._sp.decode(ids[:k].tolist()))  # the pieces before the first unknown one spell text[:i]
            raise ValueError(
                f"SentencePieceTokenizer.encode: {text[i]!r} at position {i} (in {text[i : i + 20]!r}) is not in the "
                f"vocabulary ({int(unknown.sum())} unknown piece(s) in the text). Train the tokenizer on text that "
                f"contains every character (with character_coverage=1.0), or with byte_fallback=True so that any "
                f"text encodes."
            )
        return ids

    def decode(self, ids) -> str:
        """The text of 1-D token ids (any integer array or list) in [0, vocab_size)."""
        ids = checks.check_token_ids(ids, self.vocab_size)
        return self._sp.decode(ids.tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "model_proto": base64.b64encode(self._model_proto).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentencePieceTokenizer:
        if not isinstance(d, Mapping) or d.get("type") != cls.type_name:
            got = d.get("type") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"Expected a tokenizer dict with type {cls.type_name!r}; got {got!r}.")
        if not isinstance(d.get("model_proto"), str):
            raise ValueError(
                f"SentencePieceTokenizer.from_dict needs a base64 str 'model_proto' entry; got keys {sorted(d)}."
            )
        try:
            proto = base64.b64decode(d["model_proto"].encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as e:
            raise ValueError(f"SentencePieceTokenizer.from_dict: 'model_proto' is not valid base64: {e}") from e
        return cls(proto)

    def __eq__(self, other) -> bool:
        return isinstance(other, SentencePieceTokenizer) and other._model_proto == self._model_proto

    def __hash__(self) -> int:
        return hash((self.type_name, self._model_proto))

    def __repr__(self) -> str:
        digest = hashlib.sha256(self._model_proto).hexdigest()[:12]
        return (
            f"SentencePieceTokenizer(vocab_size={self.vocab_size}, byte_fallback={self.byte_fallback}, sha256={digest})"
        )

    def __len__(self) -> int:
        return self.vocab_size

    def __getstate__(self) -> dict[str, Any]:  # the processor does not pickle; the model bytes do
        return {"model_proto": self._model_proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"])
