"""Prepared chat corpora: conversations encoded once by `jaxformer prepare`, read back as memory-mapped arrays.

    prepare_chat("chat:chats/*.jsonl", "template:byte_chatml", "prepared/chats")   # or `jaxformer prepare ...`
    corpus = open_prepared_chat("prepared/chats")
    corpus.template, corpus.split_names                          # the ChatTemplate; ["train", "validation"]
    examples = corpus.examples("train")                          # a pipeline.Examples of np.memmap arrays
    ids, mask = examples.example(0)                              # == corpus.template.encode(conversation 0)

The source is "chat:GLOB": JSONL files of `{"messages": [...]}` lines (`chat.read_conversations`), read in the
sorted order of their paths. The tokenizer is "template:DIR_OR_ID" (`chat.ChatTemplate.from_pretrained`) or
"template:byte_chatml" (`chat.byte_chatml()`, for models trained from scratch). Every conversation is encoded whole
(`ChatTemplate.encode`: the ids and the mask of the learned tokens); truncation to a row length is training's job.
The last `validation_fraction` F of the E conversations, ⌈F · E⌉ of them (default F =
`prepared.DEFAULT_VALIDATION_FRACTION`, 0.1; 0 = none), are the "validation" split, the others "train"; a fraction
that leaves the train split empty is refused.

The directory (format "jaxformer.prepared_chat/1"):

    prepare.json               the request, written first: a rerun of it redoes an unfinished directory, another
                               request is refused
    chat_template.json         the template's `to_dict()` (source, special tokens, tokenizer), before any array
    <split>.tokens.npy         int32 [N]: the token ids of the split's conversations, one after the other
    <split>.learned.npy        bool [N]: True on the tokens a model learns (the assistant's replies, end-of-turn
                               tokens included)
    <split>.starts.npy         int64 [E + 1]: conversation i is tokens[starts[i]:starts[i + 1]] (starts[0] = 0,
                               starts[E] = N, every conversation >= 2 tokens)
    metadata.json              written last: its presence means the corpus is complete. format, source, tokenizer,
                               validation_fraction, the input files (path, conversations), the sha256 of
                               chat_template.json and per split its conversations, tokens, learned_tokens,
                               max_tokens (the longest conversation) and the sha256 of its three .npy files

Every file is written to a temporary file, then renamed (`os.replace`), so none is ever half written under its
name. The .npy files are plain NumPy arrays (little-endian), opened with `np.load(mmap_mode="r")`: nothing is
copied into memory until a batch reads it. `open_prepared_chat` checks every array's dtype and shape against
metadata.json and the starts' invariants on each open; `verify=True` (or `verify()`) also recomputes the sha256 of
every file, which reads them whole.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxformer.data import chat, pipeline, shards, sources
from jaxformer.data.prepared import (
    METADATA_FILE,
    REQUEST_FILE,
    check_directory,
    check_out_and_fraction,
    read_json,
    request_command,
    sha256_file,
    stored_request,
)
from jaxformer.data.workers import progress_bar

FORMAT = "jaxformer.prepared_chat/1"
TEMPLATE_FILE = "chat_template.json"
SOURCE_PREFIX = "chat:"
TOKENIZER_PREFIX = "template:"
BUILTIN_TEMPLATES = {"byte_chatml": chat.byte_chatml}
# The arrays of a split, <split>.<name>.npy, and their dtypes (little-endian)
ARRAYS = {"tokens": np.dtype("<i4"), "learned": np.dtype("|b1"), "starts": np.dtype("<i8")}
_COPY_BYTES = 1 << 24  # copied from the encoding pass's scratch files into the .npy files 16 MiB at a time


def array_file(split: str, name: str) -> str:
    """The file name of array `name` ("tokens", "learned", "starts") of `split`."""
    return f"{split}.{name}.npy"


def load_template(tokenizer: str) -> chat.ChatTemplate:
    """The template a "template:DIR_OR_ID" / "template:byte_chatml" tokenizer names."""
    name = _check_tokenizer(tokenizer)
    builtin = BUILTIN_TEMPLATES.get(name)
    return builtin() if builtin is not None else chat.ChatTemplate.from_pretrained(name)


# -- writing ---------------------------------------------------------------------------------------------------------


def prepare_chat(
    source: str,
    tokenizer: str,
    out: str | os.PathLike,
    *,
    validation_fraction: float | None = None,
    progress: bool = True,
) -> PreparedChat:
    """Encodes the conversations of `source` with the template of `tokenizer` into `out` (the format: the module
    docstring); returns `open_prepared_chat(out)`.

    A finished directory of the same request is returned as it is ("already prepared"); an unfinished one (no
    metadata.json) is prepared again from the start; a directory of another request (chat or text), or a non-empty
    one that `jaxformer prepare` did not start, is refused.

    Args:
      source: "chat:GLOB": JSONL files of `{"messages": [...]}` lines, sorted by path (`**` recurses; files inside
        `out` are left out).
      tokenizer: "template:DIR_OR_ID" (a checkpoint directory or hub id with a chat template and tokenizer.json) or
        "template:byte_chatml" (the built-in ChatML over bytes, for models trained from scratch).
      out: the directory to write.
      validation_fraction: in [0, 1): the share of the conversations, the last ones, held out as "validation"
        (the last ⌈F · E⌉ of the E conversations: at least one), the others are "train"; 0 = no validation split.
        None (the default): `prepared.DEFAULT_VALIDATION_FRACTION` (0.1).
      progress: show a tqdm progress bar (on stderr).

    Raises:
      ValueError: a bad argument (named, with the value received), another request in `out`, a record that is not
        a conversation or that the template cannot encode (file and record named), a fraction that leaves a split
        empty.
      TypeError: an argument of the wrong kind.
      FileNotFoundError: the template's checkpoint cannot be found.
    """
    pattern = _check_source(source)
    _check_tokenizer(tokenizer)
    directory, validation_fraction = check_out_and_fraction(source, out, validation_fraction)
    request = {"format": FORMAT, "source": source, "tokenizer": tokenizer, "validation_fraction": validation_fraction}
    if check_directory(directory, request) is not None and os.path.exists(os.path.join(directory, METADATA_FILE)):
        if progress:
            print(f"{directory} is already prepared ({METADATA_FILE} exists); nothing to do.", file=sys.stderr)
        return open_prepared_chat(directory)

    files = "JSONL files of {\"messages\": [...]} lines, e.g. 'chat:chats/*.jsonl'"
    paths = sources.text_paths(pattern, directory, scheme=SOURCE_PREFIX.rstrip(":"), files=files)
    template = load_template(tokenizer)
    os.makedirs(directory, exist_ok=True)
    shards.write_json(os.path.join(directory, REQUEST_FILE), request)
    for name in os.listdir(directory):  # what an interrupted run was writing
        if name.endswith(".tmp"):
            os.remove(os.path.join(directory, name))
    template_path = os.path.join(directory, TEMPLATE_FILE)
    shards.write_json(template_path, template.to_dict())

    scratch = {name: os.path.join(directory, f"all.{name}.bin.tmp") for name in ("tokens", "learned")}
    try:
        files, lengths, learned = _encode(template, paths, scratch, progress)
        starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        splits = {}
        for split, (lo, hi) in _split_ranges(len(lengths), validation_fraction).items():
            splits[split] = {
                "conversations": hi - lo,
                "tokens": int(starts[hi] - starts[lo]),
                "learned_tokens": int(learned[lo:hi].sum()),
                "max_tokens": int(lengths[lo:hi].max()),
                "sha256": _write_split(directory, split, starts, lo, hi, scratch),
            }
    finally:
        for path in scratch.values():
            if os.path.exists(path):
                os.remove(path)
    metadata = {
        "format": FORMAT,
        "source": source,
        "tokenizer": tokenizer,
        "validation_fraction": validation_fraction,
        "files": files,
        "template_sha256": sha256_file(template_path),
        "splits": splits,
    }
    shards.write_json(os.path.join(directory, METADATA_FILE), metadata)
    return open_prepared_chat(directory)


def _check_source(source) -> str:
    if not isinstance(source, str):
        raise TypeError(f"`source` must be a str, 'chat:GLOB'; got {source!r:.80}.")
    if not source.startswith(SOURCE_PREFIX) or not source[len(SOURCE_PREFIX) :]:
        raise ValueError(f"`source`={source!r}; a chat corpus is prepared from 'chat:GLOB' (JSONL files of messages).")
    return source[len(SOURCE_PREFIX) :]


def _check_tokenizer(tokenizer) -> str:
    if not isinstance(tokenizer, str):
        raise TypeError(
            f"`tokenizer` must be a str, 'template:DIR_OR_ID' or 'template:byte_chatml'; got {tokenizer!r:.80}."
        )
    if not tokenizer.startswith(TOKENIZER_PREFIX) or not tokenizer[len(TOKENIZER_PREFIX) :]:
        raise ValueError(
            f"`tokenizer`={tokenizer!r}; a chat corpus is encoded by a chat template: 'template:DIR_OR_ID' (a "
            f"checkpoint directory or hub id) or 'template:byte_chatml' (the built-in one, for models trained from "
            f"scratch)."
        )
    return tokenizer[len(TOKENIZER_PREFIX) :]


def _encode(template: chat.ChatTemplate, paths: list[str], scratch: dict[str, str], progress: bool):
    """Encodes the conversations of every file in turn, appending the ids and masks to the scratch files (so that
    memory holds one file's conversations at a time). Returns ([{path, conversations}], lengths int64 [E],
    learned-token counts int64 [E])."""
    files, lengths, learned = [], [], []
    total = sum(os.path.getsize(p) for p in paths)
    with (
        open(scratch["tokens"], "wb") as tokens_file,
        open(scratch["learned"], "wb") as learned_file,
        progress_bar(progress, total, "encoding conversations") as bar,
    ):
        for path in paths:
            conversations = chat.read_conversations(path)
            for n, messages in enumerate(conversations, start=1):  # read_conversations checked each message
                try:
                    ids, mask = template.encode(messages)
                except (ValueError, TypeError) as e:  # ChatTemplateError is a ValueError
                    raise type(e)(f"{path}, record {n}: {e}") from None
                if len(ids) < 2:
                    raise ValueError(
                        f"{path}, record {n}: the conversation encodes to {len(ids)} token(s); a training example "
                        f"needs at least 2 (an input and a target)."
                    )
                tokens_file.write(np.asarray(ids, ARRAYS["tokens"]).tobytes())
                learned_file.write(np.asarray(mask, ARRAYS["learned"]).tobytes())
                lengths.append(len(ids))
                learned.append(int(np.count_nonzero(mask)))
            files.append({"path": path, "conversations": len(conversations)})
            bar.update(os.path.getsize(path))
    return files, np.asarray(lengths, np.int64), np.asarray(learned, np.int64)


def _split_ranges(num_conversations: int, fraction: float) -> dict[str, tuple[int, int]]:
    """{split: (first conversation, one past the last)}: validation the last ⌈F · E⌉ of the E conversations (at
    least one when F > 0), train the others."""
    if fraction == 0:
        return {"train": (0, num_conversations)}
    held_out = min(num_conversations, math.ceil(fraction * num_conversations - 1e-9))  # 0.7 * 10 is 7.000000000000001
    cut = num_conversations - held_out
    for empty, what in ((cut == 0, "train"), (cut == num_conversations, "validation")):
        if empty:
            raise ValueError(
                f"`validation_fraction`={fraction} of {num_conversations} conversation(s) leaves the {what} split "
                f"empty (validation: the last ⌈{fraction} · {num_conversations}⌉ = {held_out}). Use more "
                f"conversations or another fraction (0: no validation split)."
            )
    return {"train": (0, cut), "validation": (cut, num_conversations)}


def _write_split(directory, split, starts, lo, hi, scratch) -> dict[str, str]:
    """Writes conversations [lo, hi) as the split's three .npy files; returns {array name: the file's sha256}."""
    begin, end = int(starts[lo]), int(starts[hi])
    local = starts[lo : hi + 1] - begin
    hashes = {}
    for name in ("tokens", "learned"):
        itemsize = ARRAYS[name].itemsize
        chunks = _file_range(scratch[name], begin * itemsize, end * itemsize)
        hashes[name] = _write_npy(os.path.join(directory, array_file(split, name)), ARRAYS[name], end - begin, chunks)
    path = os.path.join(directory, array_file(split, "starts"))
    hashes["starts"] = _write_npy(path, ARRAYS["starts"], local.size, iter([local.astype(ARRAYS["starts"]).tobytes()]))
    return hashes


def _file_range(path: str, begin: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(begin)
        left = end - begin
        while left > 0:
            block = f.read(min(left, _COPY_BYTES))
            if not block:
                raise OSError(f"{path} ended {left} bytes early (it was written by this run: is the disk full?).")
            left -= len(block)
            yield block


def _write_npy(path: str, dtype: np.dtype, size: int, chunks: Iterator[bytes]) -> str:
    """Writes a 1-D .npy of `size` elements from the raw little-endian `chunks` atomically (a temporary file, then
    os.replace); returns the file's sha256."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (size,)}
    )
    digest = hashlib.sha256()
    tmp, written = f"{path}.tmp", 0
    with open(tmp, "wb") as f:
        f.write(header.getvalue())
        digest.update(header.getvalue())
        for block in chunks:
            f.write(block)
            digest.update(block)
            written += len(block)
        f.flush()
        os.fsync(f.fileno())
    if written != size * dtype.itemsize:
        raise AssertionError(f"{tmp}: wrote {written} bytes of data, expected {size * dtype.itemsize}.")
    os.replace(tmp, path)
    return digest.hexdigest()


# -- reading ---------------------------------------------------------------------------------------------------------


class PreparedChat:
    """A prepared chat corpus directory (see `open_prepared_chat`)."""

    def __init__(self, directory: str, metadata: dict[str, Any], template: chat.ChatTemplate):
        self.directory = directory
        self.metadata = metadata
        self.template = template

    @property
    def split_names(self) -> list[str]:
        return list(self.metadata["splits"])

    def examples(self, split: str) -> pipeline.Examples:
        """The conversations of `split` as a `pipeline.Examples` whose arrays are read-only `np.memmap`s of the .npy
        files (example i: the ids and mask of `template.encode(conversation i)`), checked as `open_prepared_chat`
        checks them."""
        if split not in self.metadata["splits"]:
            raise ValueError(f"{self.directory} has no split {split!r}; choose one of {self.split_names}.")
        arrays = _load_split(self.directory, split, self.metadata["splits"][split], self._command())
        bounds = arrays["starts"]  # E + 1 bounds: example i is [bounds[i], bounds[i + 1])
        return pipeline.Examples(arrays["tokens"], arrays["learned"], bounds[:-1], bounds[1:])

    def verify(self) -> None:
        """Recomputes the sha256 of chat_template.json and of every .npy file (reading each whole); ValueError naming
        the first file that differs from metadata.json."""
        files = [(TEMPLATE_FILE, self.metadata["template_sha256"], None)]
        for split, entry in self.metadata["splits"].items():
            files += [(array_file(split, name), entry["sha256"][name], split) for name in ARRAYS]
        for file, expected, split in files:
            path = os.path.join(self.directory, file)
            got = sha256_file(path)
            if got != expected:
                where = f" (split {split!r})" if split else ""
                raise ValueError(
                    f"{path}{where} is damaged: sha256 {got}, expected {expected} ({METADATA_FILE}). "
                    f"{_redo(self.directory, self._command())}"
                )

    def _command(self) -> str:
        request = stored_request(self.directory)
        return request_command(request, self.directory) if request else "jaxformer prepare --source chat:... ..."

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{k}={v['conversations']} conversations/{v['tokens']} tokens" for k, v in self.metadata["splits"].items()
        )
        return f"PreparedChat({self.directory}, {sizes})"


def open_prepared_chat(directory: str | os.PathLike, *, verify: bool = False) -> PreparedChat:
    """The chat corpus that `jaxformer prepare --source chat:...` wrote in `directory`.

    Checks on every open that it is complete and whole, cheaply: metadata.json present and of this format,
    chat_template.json's sha256, and every .npy file present with the dtype and length metadata.json records, and
    its starts consistent (0 first, the token count last, every conversation >= 2 tokens). `verify=True` also
    recomputes the sha256 of every .npy file (`PreparedChat.verify`), which reads them whole.

    Raises:
      FileNotFoundError: no such directory, no metadata.json (an unfinished preparation, or no chat corpus), or a
        missing file.
      ValueError: metadata.json of another format (a text corpus: `open_prepared`), or a damaged file (named).
    """
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{directory} does not exist (or is not a directory); prepare a chat corpus there with `jaxformer prepare "
            f"--source chat:GLOB --tokenizer template:DIR_OR_ID --out {directory}`."
        )
    request = stored_request(directory)
    command = request_command(request, directory) if isinstance(request, dict) else None
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.exists(path):
        if command is not None:
            raise FileNotFoundError(
                f"{directory} holds an unfinished preparation (no {METADATA_FILE}: it is written last): run "
                f"`{command}` again to finish it."
            )
        raise FileNotFoundError(
            f"{directory} is not a prepared chat corpus (no {METADATA_FILE}); prepare one with `jaxformer prepare "
            f"--source chat:GLOB --tokenizer template:DIR_OR_ID --out {directory}`."
        )
    command = command or "jaxformer prepare --source chat:... ..."
    try:
        metadata = read_json(path)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}). {_redo(directory, command)}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        got = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        hint = " (a text corpus: read it with data.open_prepared)" if isinstance(got, str) else ""
        raise ValueError(
            f"{path} has format {got!r}{hint}, not a chat corpus ({FORMAT!r}); prepare one with `jaxformer prepare "
            f"--source chat:GLOB --tokenizer template:DIR_OR_ID --out DIR`."
        )
    template_path = os.path.join(directory, TEMPLATE_FILE)
    if not os.path.isfile(template_path):
        raise FileNotFoundError(
            f"{template_path} is missing from the chat corpus {directory}. {_redo(directory, command)}"
        )
    if sha256_file(template_path) != metadata["template_sha256"]:
        raise ValueError(
            f"{template_path} is damaged: its sha256 differs from {METADATA_FILE}'s. {_redo(directory, command)}"
        )
    template = chat.ChatTemplate.from_dict(read_json(template_path))
    for split, entry in metadata["splits"].items():
        _load_split(directory, split, entry, command)
    corpus = PreparedChat(directory, metadata, template)
    if verify:
        corpus.verify()
    return corpus


def _redo(directory: str, command: str) -> str:
    return f"Delete {os.path.join(directory, METADATA_FILE)} and run `{command}` again to rewrite the corpus."


def _load_split(directory: str, split: str, entry: dict[str, Any], command: str) -> dict[str, np.ndarray]:
    """The split's arrays, memory-mapped, checked against metadata.json's counts (ValueError naming the file)."""
    lengths = {"tokens": entry["tokens"], "learned": entry["tokens"], "starts": entry["conversations"] + 1}
    arrays = {}
    for name, dtype in ARRAYS.items():
        path = os.path.join(directory, array_file(split, name))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the chat corpus {directory}. {_redo(directory, command)}")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:  # a truncated file: "mmap length is greater than file size", ...
            raise ValueError(f"{path} is damaged ({e}). {_redo(directory, command)}") from None
        if array.dtype != dtype or array.shape != (lengths[name],):
            raise ValueError(
                f"{path} is damaged: it holds {array.dtype} {array.shape}, {METADATA_FILE} says {dtype} "
                f"({lengths[name]},). {_redo(directory, command)}"
            )
        arrays[name] = array
    starts = np.asarray(arrays["starts"])
    problem = None
    if starts[0] != 0 or starts[-1] != entry["tokens"]:
        problem = f"it runs from {int(starts[0])} to {int(starts[-1])}, not from 0 to {entry['tokens']} (the tokens)"
    elif starts.size > 1 and np.diff(starts).min() < 2:
        k = int(np.argmin(np.diff(starts)))
        problem = f"conversation {k} is {int(starts[k + 1] - starts[k])} tokens long (every one holds at least 2)"
    if problem is not None:
        path = os.path.join(directory, array_file(split, "starts"))
        raise ValueError(f"{path} is damaged: {problem}. {_redo(directory, command)}")
    return arrays
