"""A prepared corpus (`jaxformer prepare`, data/writer.py): its format, and the reader that training uses.

    corpus = open_prepared("prepared/")
    corpus.tokenizer, corpus.vocab_size, corpus.split_names                         # ByteTokenizer(), 256, [...]
    store = corpus.split("train")                                                   # a TokenStore
    store.windows(np.array([0, 5000]), 257)                                         # int32 [2, 257]

The directory:

    metadata.json                                 written last (atomically): its presence means the corpus is complete
    tokenizer.json                                the tokenizer's to_dict(), written before any shard
    prepare.json                                  the request and its plan, so that a rerun resumes or is refused
    <split>-<i:05d>-of-<n:05d>.array_record       records of token ids (little-endian, dtype of metadata.json), each
                                                  `chunk_tokens` long except a shard's last one
    <split>-<i:05d>-of-<n:05d>.docs.npy           int64 starts (in the shard's tokens) of the documents starting there
    <split>-<i:05d>-of-<n:05d>.done.json          the finished shard's counts and sha256 (a rerun skips it)

A split's token stream is its documents' tokens joined in order, without a separator. Records are written with
ArrayRecord's `group_size:1` (one record per chunk: a window reads and decompresses only the records it covers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxformer import checks
from jaxformer.data.sources import parse_source
from jaxformer.data.token_store import TokenStore, check_document_starts
from jaxformer.data.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT = "jaxformer.prepared/1"
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"
REQUEST_FILE = "prepare.json"
# The defaults of a request (`jaxformer prepare`'s flags), which its command line leaves out.
DEFAULT_CHUNK_TOKENS = 1024  # a 257-token window reads 1-2 small records, not 1-2 records of 4x the bytes
DEFAULT_SHARD_MB = 32.0
DEFAULT_TOKENIZER_SAMPLE_MB = 16.0
DEFAULT_FEATURE = "text"
# The share of a single-split source's text held out as "validation" unless the request says otherwise:
# nanoGPT's 90/10 split of Shakespeare, and config.data.validation_fraction's default, so that `jaxformer prepare`
# then `jaxformer train` works with the defaults (the recipes evaluate on "validation"). Evaluation reads the
# whole split, so a corpus of GBs wants a much smaller one (nanoGPT holds out 0.05% of OpenWebText).
DEFAULT_VALIDATION_FRACTION = 0.1
_READ_BUFFER_BYTES = 8192  # one random read fetches about a record (1024 uint16 tokens), not 32 KiB
# Random access with no readahead, read in the calling thread (array_record's default parallelism costs ~50 us of
# dispatch per call, more than the read).
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"


def default_validation_fraction(source: str) -> float:
    """`DEFAULT_VALIDATION_FRACTION` for a single-split source (text:GLOB, tfds:NAME:SPLIT, and chat:GLOB, the
    conversations of data/chat_corpus.py); 0 for tfds:NAME, whose splits are the dataset's own."""
    if isinstance(source, str) and source.startswith("chat:"):
        return DEFAULT_VALIDATION_FRACTION
    kind, _, split = parse_source(source)
    return DEFAULT_VALIDATION_FRACTION if kind == "text" or split is not None else 0.0


def check_out_and_fraction(source: str, out, validation_fraction: float | None) -> tuple[str, float]:
    """(the absolute directory `out` names, the validation fraction: `default_validation_fraction(source)` when
    None, else checked to be in [0, 1)): the arguments every `jaxformer prepare` request shares."""
    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"`out` must be a directory path (a str or os.PathLike); got {out!r:.80}.")
    if not os.fspath(out):
        raise ValueError(f"`out` must be a directory path; got {out!r}.")
    if validation_fraction is None:
        validation_fraction = default_validation_fraction(source)
    fraction = checks.check_real("validation_fraction", validation_fraction, low=0, high=1, high_open=True)
    return os.path.abspath(os.path.expanduser(os.fspath(out))), fraction


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stored_request(directory: str) -> dict[str, Any] | None:
    """The request of prepare.json in `directory`, None when there is none (or it does not read)."""
    try:
        return read_json(os.path.join(directory, REQUEST_FILE))
    except (OSError, ValueError):
        return None


def prepare_command(request: dict[str, Any], directory: str) -> str:
    """The `jaxformer prepare` command line of a request (its defaults left out)."""
    q = shlex.quote
    words = [f"--source {q(request['source'])}", f"--tokenizer {q(request['tokenizer'])}", f"--out {q(directory)}"]
    fraction = request.get("validation_fraction")
    if fraction is not None and fraction != default_validation_fraction(request["source"]):
        words.append(f"--validation_fraction {fraction}")
    if request.get("vocab_size") is not None:
        words.append(f"--vocab_size {request['vocab_size']}")
    for key, default in (
        ("shard_mb", DEFAULT_SHARD_MB),
        ("chunk_tokens", DEFAULT_CHUNK_TOKENS),
        ("tokenizer_sample_mb", DEFAULT_TOKENIZER_SAMPLE_MB),
        ("feature", DEFAULT_FEATURE),
    ):
        if request.get(key, default) != default:
            words.append(f"--{key} {q(str(request[key]))}")
    return "jaxformer prepare " + " ".join(words)


def request_command(request: dict[str, Any], directory: str) -> str:
    """`prepare_command`, or a pointer to the request file when this jaxformer cannot spell the request out."""
    try:
        return prepare_command(request, directory)
    except (KeyError, TypeError, ValueError):
        return f"jaxformer prepare ... (the request in {os.path.join(directory, REQUEST_FILE)})"


def check_directory(directory: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The request stored in `directory` when it equals `request` (a rerun), None for a new or empty directory;
    ValueError for a directory of another request (the stored one and this one named, as commands) or of
    something else. Every `jaxformer prepare` writer (text and chat corpora) checks its `out` with this."""
    if not os.path.exists(directory):
        return None
    if not os.path.isdir(directory):
        raise ValueError(f"`out`={directory!r} exists and is not a directory.")
    if not os.path.exists(os.path.join(directory, REQUEST_FILE)):
        if os.listdir(directory):
            raise ValueError(
                f"`out`={directory!r} is not empty and holds no {REQUEST_FILE}, so it is not a corpus that jaxformer "
                f"prepare started; pass a new or empty directory."
            )
        return None
    stored = stored_request(directory)
    if not isinstance(stored, dict):
        raise ValueError(
            f"{os.path.join(directory, REQUEST_FILE)} does not read as a request; delete {directory} (or pass another "
            f"`out`) to prepare the corpus there."
        )
    differs = {k: (stored.get(k), v) for k, v in request.items() if stored.get(k) != v}
    if differs:
        state = "prepared" if os.path.exists(os.path.join(directory, METADATA_FILE)) else "partly prepared"
        what = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differs.items())
        raise ValueError(
            f"{directory} was {state} from another request ({what}): refusing to mix them. There: "
            f"`{request_command(stored, directory)}`; now: `{request_command(request, directory)}`. Rerun the "
            f"stored request, or pass another `out`, or delete {directory}."
        )
    return stored


class ShardedTokens(TokenStore):
    """One split of a prepared corpus: the token stream of its shards, read by window from the ArrayRecord files.

    Cheap to make and to pickle (grain workers pickle it): a file is opened on its first read, in each process and
    thread (a reader's position is its state). A window reads only the records it covers (it may cross record and
    shard boundaries); a batch of windows reads each record it needs once, by seek and read with no readahead and
    no thread pool: ~3 us a record, against ~50 us per `ArrayRecordDataSource.__getitems__` or
    `ArrayRecordReader.read(keys)` call, which a batch spread over many shards would pay once per shard.

    Args:
      directory: the prepared corpus.
      split: the split's name.
      shards: its shard entries of metadata.json (file, tokens, records, documents).
      chunk_tokens: tokens per record.
      dtype: the token dtype of the records ("uint16" or "uint32").
    """

    def __init__(self, directory: str, split: str, shards: Sequence[dict[str, Any]], *, chunk_tokens: int, dtype: str):
        self.directory = os.fspath(directory)
        self.split = split
        self.chunk_tokens = int(chunk_tokens)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shards = [dict(s) for s in shards]
        tokens = np.array([s["tokens"] for s in self.shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64)  # of every shard
        nonempty = np.flatnonzero(tokens > 0)
        self._files = [os.path.join(self.directory, self.shards[k]["file"]) for k in nonempty]
        self._tokens = tokens[nonempty]
        self._records = np.array([self.shards[k]["records"] for k in nonempty], dtype=np.int64)
        self._starts = self._offsets[nonempty]  # first token of each non-empty shard
        self._first_record = np.concatenate([[0], np.cumsum(self._records)[:-1]]).astype(np.int64)
        self._local = threading.local()  # each thread's readers: a reader's position is its own state
        self._document_starts: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_local": None, "_document_starts": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _reader(self, k: int):
        """This thread's reader of non-empty shard k, opened on first use."""
        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = [None] * len(self._files)
        if readers[k] is None:
            from array_record.python.array_record_module import ArrayRecordReader

            readers[k] = ArrayRecordReader(self._files[k], _READER_OPTIONS, file_reader_buffer_size=_READ_BUFFER_BYTES)
        return readers[k]

    def _read(self, keys: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """(records of the sorted global record keys, their shards, their positions in those shards). A seek, then
        one `read()` per record (consecutive records need no second seek): ~3 us a record, where a `read([keys])`
        call costs ~50 us whatever its length, which a batch of windows spread over many shards pays per shard."""
        shard = np.searchsorted(self._first_record, keys, side="right") - 1
        within = keys - self._first_record[shard]
        records: list[bytes] = []
        previous = (-1, -1)
        for k, w in zip(shard.tolist(), within.tolist(), strict=True):
            reader = self._reader(k)
            if previous != (k, w - 1):
                reader.seek(w)
            records.append(reader.read())
            previous = (k, w)
        return records, shard, within

    def _locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(non-empty shard, global record key, first token of that record) of each token position."""
        shard = np.searchsorted(self._starts, positions, side="right") - 1
        record = (positions - self._starts[shard]) // self.chunk_tokens
        return shard, self._first_record[shard] + record, self._starts[shard] + record * self.chunk_tokens

    def windows(self, starts, length: int) -> np.ndarray:
        starts, length = self.check_windows(starts, length)
        if starts.size == 0:
            return np.zeros((0, length), np.int32)
        _, first, first_token = self._locate(starts)
        _, last, _ = self._locate(starts + (length - 1))
        counts = last - first + 1
        run_starts = np.cumsum(counts) - counts
        keys = np.unique(np.repeat(first - run_starts, counts) + np.arange(int(counts.sum())))
        records, shard, within = self._read(keys)
        sizes = np.fromiter((len(r) for r in records), np.int64, len(records))
        expected = np.minimum(self.chunk_tokens, self._tokens[shard] - within * self.chunk_tokens) * self.dtype.itemsize
        if np.any(sizes != expected):
            k = int(np.argmax(sizes != expected))
            raise ValueError(
                f"Record {int(within[k])} of {self._files[shard[k]]} holds {int(sizes[k])} bytes; metadata.json says "
                f"{int(expected[k])}. The shard is damaged: delete it and {METADATA_FILE}, then run jaxformer "
                f"prepare again to rewrite it."
            )
        buffer = np.frombuffer(b"".join(records), dtype=self.dtype)
        record_offsets = (np.cumsum(sizes) - sizes) // self.dtype.itemsize
        position = record_offsets[np.searchsorted(keys, first)] + (starts - first_token)
        return buffer[position[:, None] + np.arange(length)].astype(np.int32)

    def document_starts(self) -> np.ndarray:
        if self._document_starts is None:
            parts = []
            for k, shard in enumerate(self.shards):
                stem = shard["file"].removesuffix(".array_record")
                parts.append(np.load(os.path.join(self.directory, f"{stem}.docs.npy")) + self._offsets[k])
            starts = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            self._document_starts = check_document_starts(starts, len(self))
        return self._document_starts

    def __repr__(self) -> str:
        return f"ShardedTokens(split={self.split!r}, tokens={len(self)}, shards={len(self.shards)}, {self.directory})"


class PreparedCorpus:
    """A prepared corpus directory (see `open_prepared`)."""

    def __init__(self, directory: str, metadata: dict[str, Any]):
        self.directory = directory
        self.metadata = metadata
        self.tokenizer: Tokenizer = tokenizer_from_dict(metadata["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    @property
    def split_names(self) -> list[str]:
        return list(self.metadata["splits"])

    def split(self, name: str) -> ShardedTokens:
        """The token store of split `name` (e.g. "train")."""
        if name not in self.metadata["splits"]:
            raise ValueError(f"{self.directory} has no split {name!r}; choose one of {self.split_names}.")
        return ShardedTokens(
            self.directory,
            name,
            self.metadata["splits"][name]["shards"],
            chunk_tokens=self.metadata["chunk_tokens"],
            dtype=self.metadata["dtype"],
        )

    def verify(self) -> None:
        """Recomputes the sha256 of every shard file (records and document starts); raises ValueError naming the
        first file that differs, with the expected and the computed hash."""
        for name, split in self.metadata["splits"].items():
            for shard in split["shards"]:
                stem = shard["file"].removesuffix(".array_record")
                for file, expected in (
                    (shard["file"], shard["sha256"]),
                    (f"{stem}.docs.npy", shard.get("docs_sha256")),
                ):
                    if expected is None:
                        continue
                    got = sha256_file(os.path.join(self.directory, file))
                    if got != expected:
                        raise ValueError(
                            f"{os.path.join(self.directory, file)} (split {name!r}) is damaged: sha256 {got}, expected "
                            f"{expected}. Delete it and {METADATA_FILE}, then run `{self._command()}` again to "
                            f"rewrite it."
                        )

    def _command(self) -> str:
        request = stored_request(self.directory)
        return prepare_command(request, self.directory) if request else "jaxformer prepare ..."

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v['tokens']}" for k, v in self.metadata["splits"].items())
        return f"PreparedCorpus({self.directory}, vocab_size={self.vocab_size}, tokens: {sizes})"


def open_prepared(directory: str | os.PathLike) -> PreparedCorpus:
    """The corpus that `jaxformer prepare` wrote in `directory`.

    Checks cheaply that it is complete: metadata.json present and of this format, every shard file present with the
    recorded number of records (`verify()` checks the contents).

    Raises:
      FileNotFoundError: no such directory, or no metadata.json (the preparation did not finish), or a missing shard.
      ValueError: metadata.json of another format, or a shard with another number of records.
    """
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{directory} does not exist (or is not a directory); prepare a corpus there with `jaxformer prepare "
            f"--source ... --tokenizer ... --out {directory}`."
        )
    request = stored_request(directory)
    again = f"run `{prepare_command(request, directory)}` again" if request else "run jaxformer prepare again"
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.exists(path):
        if request is not None:
            raise FileNotFoundError(
                f"{directory} holds an unfinished preparation (no {METADATA_FILE}: it is written last): {again} to "
                f"finish it."
            )
        raise FileNotFoundError(
            f"{directory} is not a prepared corpus (no {METADATA_FILE}); prepare one with `jaxformer prepare "
            f"--source ... --tokenizer ... --out {directory}`."
        )
    try:
        metadata = read_json(path)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and {again} to rewrite it.") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        got = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ValueError(f"{path} has format {got!r}; this jaxformer reads {FORMAT!r}.")
    from array_record.python.array_record_module import ArrayRecordReader

    for split in metadata["splits"].values():
        for shard in split["shards"]:
            file = os.path.join(directory, shard["file"])
            docs = file.removesuffix(".array_record") + ".docs.npy"
            for f in (file, docs):
                if not os.path.isfile(f):
                    raise FileNotFoundError(
                        f"{f} is missing from the prepared corpus {directory}: delete {METADATA_FILE} and {again} "
                        f"to rewrite the missing shards."
                    )
            try:
                reader = ArrayRecordReader(file)
                records = reader.num_records()
                reader.close()
            except (RuntimeError, ValueError, OSError) as e:
                records = f"no readable ({type(e).__name__}: {e})"
            if records != shard["records"]:
                raise ValueError(
                    f"{file} holds {records} records; {METADATA_FILE} says {shard['records']}. The shard is damaged: "
                    f"delete it and {METADATA_FILE}, then {again} to rewrite it."
                )
    return PreparedCorpus(directory, metadata)
