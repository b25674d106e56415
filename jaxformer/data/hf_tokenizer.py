"""Hugging Face tokenizers (`tokenizer.json`: GPT-2's byte-level BPE, BERT's WordPiece, Llama's BPE / Unigram) in
jaxformer's Tokenizer protocol, through the `tokenizers` library, so training and sampling use a pretrained
model's own vocabulary like the char tokenizer."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer as _Tokenizer

from jaxformer import checks, hub

FILE = "tokenizer.json"


class HFTokenizer:
    """A `tokenizers.Tokenizer` as a jaxformer tokenizer: `encode(text) -> int32 [len]` (no special tokens added:
    jaxformer's text pipeline joins documents itself), `decode(ids)` (special tokens kept, so the round trip is
    lossless), `vocab_size` (added tokens included), `to_dict()` (the whole tokenizer.json, for a checkpoint)."""

    type_name: ClassVar[str] = "hf"

    def __init__(self, tokenizer: _Tokenizer):
        if not isinstance(tokenizer, _Tokenizer):
            raise TypeError(f"`tokenizer` must be a tokenizers.Tokenizer; got {type(tokenizer).__name__}.")
        self.tokenizer = tokenizer

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> HFTokenizer:
        path = os.path.join(os.fspath(directory), FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist: jaxformer reads fast tokenizers (tokenizer.json); a checkpoint with only "
                "a slow tokenizer (vocab.txt, *.model) needs converting with transformers first."
            )
        return cls(_Tokenizer.from_file(path))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> HFTokenizer:
        """The tokenizer.json of a checkpoint directory or a hub id (its tokenizer files only, downloaded into
        huggingface_hub's cache when online; offline the cache is used): `hub.resolve`."""
        return cls.from_directory(hub.resolve(path_or_id, files=hub.TOKENIZER_FILES))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> np.ndarray:
        """int32 `[len]`; `add_special_tokens=True` adds what the tokenizer's post-processor puts around a text
        (transformers' default: `<s>` first for Llama), as lm_eval's hf backend encodes (jaxformer.evaluation)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids, np.int32)

    def token_id(self, token: str) -> int | None:
        """The id of a token's text (e.g. tokenizer_config.json's "eos_token"), None if it is not in the vocabulary."""
        return self.tokenizer.token_to_id(token)

    @property
    def prefix_ids(self) -> tuple[int, ...]:
        """The special tokens the tokenizer's post-processor puts before a text (`<bos>` for Gemma, `<s>` for
        Llama, `[CLS]` for BERT, none for GPT-2): what a prompt for the pretrained model starts with. `encode`
        leaves them out (the text pipeline joins documents itself)."""
        plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a", add_special_tokens=True).ids
        starts = [k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain]
        return tuple(full[: starts[0]]) if starts else ()

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        """The text of `ids`; special tokens are kept (a lossless round trip) unless `skip_special_tokens`."""
        ids = checks.check_token_ids(ids, self.vocab_size)
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `tokenizer.json` into `directory`."""
        self.tokenizer.save(os.path.join(os.fspath(directory), FILE))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "tokenizer_json": self.tokenizer.to_str()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HFTokenizer:
        if not isinstance(d, dict) or d.get("type") != cls.type_name or "tokenizer_json" not in d:
            raise ValueError(f"Expected an HFTokenizer dict with type 'hf' and 'tokenizer_json'; got {d!r:.80}.")
        return cls(_Tokenizer.from_str(d["tokenizer_json"]))
