"""A corpus tokenized once into ArrayRecord shards (`jaxformer prepare`), then read by position for training.

    prepare("text:corpus/*.txt", "byte", "prepared/", validation_fraction=0.01)    # `jaxformer prepare ...`
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

A document is a text file or a TFDS record's text feature. The documents of a split are joined in order, without a
separator; each is tokenized on its own (no token spans two documents) and a document that does not fit in a shard
is cut at line ends, about every `shard_mb` MB of text, so that a 2 GB file streams through one shard at a time and
a subword tokenizer sees whole lines. Documents without text are skipped.

Shards are tokenized in parallel by a process pool started with "spawn" (never fork: the parent has imported jax).
Records are written with ArrayRecord's `group_size:1` (one record per chunk: a window reads and decompresses only
the records it covers).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxformer.data.token_store import TokenStore, check_document_starts
from jaxformer.data.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

FORMAT = "jaxformer.prepared/1"
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"
REQUEST_FILE = "prepare.json"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: a random read decompresses just that record
DEFAULT_CHUNK_TOKENS = 1024  # a 257-token window reads 1-2 small records, not 1-2 records of 4x the bytes
DEFAULT_SHARD_MB = 32.0
DEFAULT_TOKENIZER_SAMPLE_MB = 16.0
TOKENIZER_NAMES = ("char", "byte", "sentencepiece", "hf:DIR_OR_ID")
SOURCE_FORMS = ("tfds:NAME[:SPLIT]", "text:GLOB")
_MB = 1_000_000
_READ_BUFFER_BYTES = 8192  # one random read fetches about a record (1024 uint16 tokens), not 32 KiB
# Random access with no readahead, read in the calling thread (array_record's default parallelism costs ~50 us of
# dispatch per call, more than the read).
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_LINE_SEARCH_BLOCK = 1 << 16
_VERSION = re.compile(r"\d+\.\d+\.\d+")


# -- Documents ------------------------------------------------------------------------------------------------------


class _TextFiles:
    """Documents that are text files (UTF-8), read by byte range."""

    def __init__(self, paths: Sequence[str]):
        self.paths = tuple(paths)

    def sizes(self) -> np.ndarray:
        return np.array([os.path.getsize(p) for p in self.paths], dtype=np.int64)

    def read(self, doc: int, start: int, end: int) -> bytes:
        with open(self.paths[doc], "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise ValueError(
                f"{self.paths[doc]} changed while being prepared: bytes [{start}, {end}) are no longer there "
                f"(read {len(data)} bytes)."
            )
        return data

    def where(self, doc: int) -> str:
        return self.paths[doc]

    def identity(self) -> dict[str, Any]:
        return {"type": "text", "files": list(self.paths)}


_TFDS_SOURCES: dict[tuple[str, str, str], Any] = {}  # per process: opening a tfds source costs ~0.5 s


class _TfdsRecords:
    """Documents that are the records of a prepared TFDS split (their `feature`, UTF-8)."""

    def __init__(self, name: str, split: str, data_dir: str, feature: str):
        self.name, self.split, self.data_dir, self.feature = name, split, data_dir, feature
        self._last: tuple[int, bytes] | None = None  # the record read last: cuts search it several times

    def __getstate__(self):
        return {**self.__dict__, "_last": None}

    def _source(self):
        key = (self.name, self.split, self.data_dir)
        if key not in _TFDS_SOURCES:
            from jaxformer.data.sources import tfds_source

            _TFDS_SOURCES[key] = tfds_source(self.name, self.split, data_dir=self.data_dir)
        return _TFDS_SOURCES[key]

    def __len__(self) -> int:
        return len(self._source())

    def record(self, doc: int) -> bytes:
        if self._last is not None and self._last[0] == doc:
            return self._last[1]
        record = self._source()[doc]
        if self.feature not in record:
            raise ValueError(
                f"Records of TFDS dataset {self.name!r} have no feature {self.feature!r}; pass `feature` one of "
                f"{sorted(record)}."
            )
        value = record[self.feature]
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
        self._last = (doc, value)
        return value

    def read(self, doc: int, start: int, end: int) -> bytes:
        return self.record(doc)[start:end]

    def where(self, doc: int) -> str:
        return f"record {doc} of tfds {self.name}:{self.split}"

    def identity(self) -> dict[str, Any]:
        return {"type": "tfds", "name": self.name, "split": self.split, "feature": self.feature}


def _record_sizes(docs: _TfdsRecords, lo: int, hi: int) -> np.ndarray:
    return np.array([len(docs.record(i)) for i in range(lo, hi)], dtype=np.int64)


def _decode(docs, doc: int, start: int, end: int) -> str:
    data = docs.read(doc, start, end)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{docs.where(doc)} is not UTF-8 text: {e.reason} at byte {start + e.start}. jaxformer prepare reads "
            f"UTF-8 only; convert the file (e.g. with iconv) or leave it out of the glob."
        ) from None


def _line_start(docs, doc: int, pos: int, size: int) -> int:
    """The first line start at or after byte `pos` of a document: `pos` itself when it follows a newline, else just
    after the next newline, else the document's end (the next document starts a line)."""
    if pos <= 0:
        return 0
    at = pos - 1
    while at < size:
        block = docs.read(doc, at, min(size, at + _LINE_SEARCH_BLOCK))
        i = block.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(block)
    return size


# -- The plan: which bytes of which documents make each shard ----------------------------------------------------------

# Positions are bytes of the source's documents joined in order (`cum[d]`: where document d begins). A split is a
# range of them, a shard a range inside its split: O(1) memory per shard, however many documents it holds. A worker
# turns its shard into segments [doc, start, end, starts_document] (bytes [start, end) of a document;
# starts_document: a document of the split begins there, as the split's first segment always does).


@dataclasses.dataclass
class _SplitPlan:
    name: str
    docs: Any  # _TextFiles | _TfdsRecords
    cum: np.ndarray  # int64 [num documents + 1]: where each document of the source begins, then the total
    begin: int  # the split's bytes: [begin, end)
    end: int
    shards: list[tuple[int, int]]  # each shard's bytes

    def shard_stem(self, i: int) -> str:
        return f"{self.name}-{i:05d}-of-{len(self.shards):05d}"

    def shard_bytes(self, i: int) -> int:
        return self.shards[i][1] - self.shards[i][0]

    def shard_spec(self, i: int) -> tuple[int, int, int, int, np.ndarray]:
        """What a worker needs to list a shard's segments: (begin, end, split begin, first document, cum of its
        documents)."""
        begin, end = self.shards[i]
        first = int(np.searchsorted(self.cum, begin, side="right")) - 1
        last = int(np.searchsorted(self.cum, end - 1, side="right")) - 1
        return begin, end, self.begin, first, self.cum[first : last + 2]

    def describe(self) -> dict[str, Any]:
        sizes = hashlib.sha256(np.diff(self.cum).astype("<i8").tobytes()).hexdigest()
        return {"name": self.name, "docs": self.docs.identity(), "sizes_sha256": sizes, "shards": self.shards}


def _segments(begin: int, end: int, split_begin: int, first: int, cum: np.ndarray) -> list[list]:
    """The segments of the bytes [begin, end) (see above)."""
    out = []
    for k in range(cum.size - 1):
        a, b = max(begin, int(cum[k])), min(end, int(cum[k + 1]))
        if b > a:
            out.append([first + k, a - int(cum[k]), b - int(cum[k]), a == cum[k] or a == split_begin])
    return out


def _next_line_start(docs, cum: np.ndarray, pos: int) -> int:
    """The first line start at or after `pos` in the joined documents (a document's start is one)."""
    doc = int(np.searchsorted(cum, pos, side="right")) - 1
    if doc >= cum.size - 1 or pos == cum[doc]:
        return pos
    return int(cum[doc]) + _line_start(docs, doc, pos - int(cum[doc]), int(cum[doc + 1] - cum[doc]))


def _shard_ranges(docs, cum: np.ndarray, begin: int, end: int, target: int) -> list[tuple[int, int]]:
    """[begin, end) in ranges of about `target` bytes, each ending at a line start."""
    ranges, pos = [], begin
    while pos < end:
        stop = end if pos + target >= end else min(end, _next_line_start(docs, cum, pos + target))
        ranges.append((pos, stop))
        pos = stop
    return ranges


# -- Running jobs in parallel ----------------------------------------------------------------------------------------


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which lets the shards in flight finish and cancels the rest."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Runner:
    """Runs jobs in a process pool ("spawn": never fork a process that may have imported jax), or in this process
    when `workers` is 1. The pool starts on first use and serves every pass."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def run(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """Yields (job index, fn(*job)) as the jobs finish."""
        if self.workers == 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                yield i, fn(*job)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        futures = {self._pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)  # the shards in flight finish (and are kept for a rerun)
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _progress(enabled: bool, total: int, desc: str, unit: str = "B", initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
        disable=not enabled, file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip


# -- Workers: vocabulary and shards ----------------------------------------------------------------------------------


def _segment_chars(docs, spec: tuple) -> str:
    chars: set[str] = set()
    for doc, start, end, _ in _segments(*spec):
        chars.update(_decode(docs, doc, start, end))
    return "".join(sorted(chars))


_WORKER_TOKENIZERS: dict[tuple[str, str], Tokenizer] = {}


def _load_tokenizer_file(path: str, sha256: str) -> Tokenizer:
    key = (path, sha256)
    if key not in _WORKER_TOKENIZERS:
        with open(path, "rb") as f:
            raw = f.read()
        got = hashlib.sha256(raw).hexdigest()
        if got != sha256:
            raise ValueError(f"{path} changed while preparing (sha256 {got}, expected {sha256}).")
        _WORKER_TOKENIZERS.clear()
        _WORKER_TOKENIZERS[key] = tokenizer_from_dict(json.loads(raw))
    return _WORKER_TOKENIZERS[key]


_ENCODE_BLOCK_CHARS = 1 << 20  # char / byte tokenizers encode a shard 1M characters at a time (bounded memory)


def _encode_segments(tokenizer: Tokenizer, texts: list[str], dtype: str) -> tuple[np.ndarray, list[int]]:
    """(tokens of the segments, joined, as `dtype`; tokens per segment). Each segment is encoded on its own. Char
    and byte tokenizers map characters independently, so they encode in blocks of `_ENCODE_BLOCK_CHARS` (the same
    tokens; a whole shard at once would hold ~25 bytes per character in temporaries)."""
    target = np.dtype(dtype).newbyteorder("<")
    high = np.iinfo(target).max
    parts, lengths = [], []
    for text in texts:
        if isinstance(tokenizer, (CharTokenizer, ByteTokenizer)):
            blocks = [text[i : i + _ENCODE_BLOCK_CHARS] for i in range(0, len(text), _ENCODE_BLOCK_CHARS)]
        else:
            blocks = [text]
        count = 0
        for block in blocks:
            ids = np.asarray(tokenizer.encode(block))
            if ids.size and (ids.min() < 0 or ids.max() > high):
                raise ValueError(f"token ids outside [0, {high}] do not fit the dtype {dtype}.")
            parts.append(ids.astype(target))
            count += ids.size
        lengths.append(count)
    tokens = np.concatenate(parts) if parts else np.zeros(0, target)
    return tokens, lengths


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: str, value: Any) -> None:
    """Writes JSON atomically: a temporary file, then os.replace."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_shard(
    directory: str,
    stem: str,
    docs,
    spec: tuple,
    chunk_tokens: int,
    dtype: str,
    tokenizer_file: str,
    tokenizer_sha256: str,
    key: str,
) -> dict[str, Any]:
    """Tokenizes one shard's text and writes its records, document starts and done marker; returns the marker."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tokenizer = _load_tokenizer_file(tokenizer_file, tokenizer_sha256)
    segments = _segments(*spec)
    texts = [_decode(docs, doc, start, end) for doc, start, end, _ in segments]
    try:
        tokens, lengths = _encode_segments(tokenizer, texts, dtype)
    except ValueError as e:
        where = ", ".join(f"{docs.where(doc)} bytes [{start}, {end})" for doc, start, end, _ in segments[:3])
        raise ValueError(f"Shard {stem} ({where}{', ...' if len(segments) > 3 else ''}): {e}") from None
    del texts
    offsets = np.cumsum([0, *lengths[:-1]]).astype(np.int64) if lengths else np.zeros(0, np.int64)
    starts = np.array(
        [offsets[k] for k, seg in enumerate(segments) if seg[3] and lengths[k] > 0], dtype=np.int64
    ).reshape(-1)

    records_path = os.path.join(directory, f"{stem}.array_record")
    docs_path = os.path.join(directory, f"{stem}.docs.npy")
    writer = ArrayRecordWriter(f"{records_path}.tmp", WRITER_OPTIONS)
    records = 0
    for i in range(0, tokens.size, chunk_tokens):
        writer.write(tokens[i : i + chunk_tokens].tobytes())
        records += 1
    writer.close()
    with open(f"{docs_path}.tmp", "wb") as f:
        np.save(f, starts)
    marker = {
        "file": os.path.basename(records_path),
        "tokens": int(tokens.size),
        "records": records,
        "documents": int(starts.size),
        "sha256": _sha256_file(f"{records_path}.tmp"),
        "docs_sha256": _sha256_file(f"{docs_path}.tmp"),
        "file_bytes": os.path.getsize(f"{records_path}.tmp"),
        "text_bytes": int(sum(end - start for _, start, end, _ in segments)),
        "key": key,
    }
    os.replace(f"{records_path}.tmp", records_path)
    os.replace(f"{docs_path}.tmp", docs_path)
    _write_json(os.path.join(directory, f"{stem}.done.json"), marker)
    return marker


def _finished_marker(directory: str, stem: str, key: str) -> dict[str, Any] | None:
    """The done marker of a shard that a previous run finished with the same plan and tokenizer, else None."""
    try:
        with open(os.path.join(directory, f"{stem}.done.json")) as f:
            marker = json.load(f)
        if (
            marker.get("key") == key
            and os.path.getsize(os.path.join(directory, f"{stem}.array_record")) == marker["file_bytes"]
            and os.path.isfile(os.path.join(directory, f"{stem}.docs.npy"))
        ):
            return marker
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


# -- Arguments --------------------------------------------------------------------------------------------------------


def _check_number(name: str, value, *, low: float, high: float | None = None, low_open: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        lo = f"({low}" if low_open else f"[{low}"
        hi = f"{high})" if high is not None else "inf)"
        raise ValueError(f"`{name}` must be a number in {lo}, {hi}; got {value!r}.")
    return value


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


def _parse_source(source) -> tuple[str, str, str | None]:
    """("tfds", NAME, SPLIT or None) or ("text", GLOB, None)."""
    if not isinstance(source, str) or ":" not in source:
        raise ValueError(f"`source`={source!r}; expected one of {SOURCE_FORMS}, e.g. 'tfds:tiny_shakespeare'.")
    scheme, rest = source.split(":", 1)
    if scheme == "text" and rest:
        return "text", rest, None
    if scheme == "tfds" and rest:
        parts = rest.split(":")
        if len(parts) == 1 or _VERSION.fullmatch(parts[-1]):
            return "tfds", rest, None
        if not all(parts):
            raise ValueError(f"`source`={source!r}; expected tfds:NAME or tfds:NAME:SPLIT.")
        return "tfds", ":".join(parts[:-1]), parts[-1]
    raise ValueError(
        f"`source`={source!r}: unknown scheme {scheme!r} or nothing after it; expected one of {SOURCE_FORMS}."
    )


def _check_tokenizer_name(tokenizer, vocab_size) -> int | None:
    if not isinstance(tokenizer, str) or not (
        tokenizer in ("char", "byte", "sentencepiece") or (tokenizer.startswith("hf:") and len(tokenizer) > 3)
    ):
        raise ValueError(f"`tokenizer`={tokenizer!r}; choose one of {TOKENIZER_NAMES}.")
    if tokenizer == "sentencepiece":
        if vocab_size is None:
            raise ValueError("`vocab_size` is required with tokenizer 'sentencepiece' (e.g. 8000); got None.")
        return _check_positive("vocab_size", vocab_size)
    if vocab_size is not None:
        raise ValueError(
            f"`vocab_size`={vocab_size!r} applies only to tokenizer 'sentencepiece'; the {tokenizer!r} "
            f"vocabulary is given (byte, hf:) or read from the corpus (char). Leave it out."
        )
    return None


def _text_paths(pattern: str, out: str) -> list[str]:
    """The files that the glob matches, sorted, less any inside the output directory `out`."""
    expanded = os.path.expanduser(pattern)
    paths = sorted(os.path.abspath(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    paths = [p for p in paths if not p.startswith(os.path.join(out, ""))]
    if not paths:
        raise ValueError(
            f"`source`='text:{pattern}' matches no file (glob {expanded!r}, relative to {os.getcwd()}); "
            f"pass a glob of text files, e.g. 'text:corpus/*.txt'."
        )
    return paths


def _tfds_split_names(name: str, data_dir: str) -> list[str]:
    import tensorflow_datasets as tfds

    from jaxformer.data.sources import DatasetNotPreparedError, tfds_source

    def prepared_builder():
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            return builder if builder.is_prepared() else None
        except Exception:
            return None

    builder = prepared_builder()
    if builder is None:
        # Fetches what jaxformer knows how to (data.download), else raises DatasetNotPreparedError saying what to do.
        tfds_source(name, "train", data_dir=data_dir)
        builder = prepared_builder()
    if builder is None:
        raise DatasetNotPreparedError(f"TFDS dataset {name!r} is not prepared in {data_dir}.")
    return list(builder.info.splits)


def _command(request: dict[str, Any], directory: str) -> str:
    """The `jaxformer prepare` command line of a request."""
    q = shlex.quote
    words = [f"--source {q(request['source'])}", f"--tokenizer {q(request['tokenizer'])}", f"--out {q(directory)}"]
    if request.get("validation_fraction"):
        words.append(f"--validation_fraction {request['validation_fraction']}")
    if request.get("vocab_size") is not None:
        words.append(f"--vocab_size {request['vocab_size']}")
    for key, default in (
        ("shard_mb", DEFAULT_SHARD_MB),
        ("chunk_tokens", DEFAULT_CHUNK_TOKENS),
        ("tokenizer_sample_mb", DEFAULT_TOKENIZER_SAMPLE_MB),
        ("feature", "text"),
    ):
        if request.get(key, default) != default:
            words.append(f"--{key} {q(str(request[key]))}")
    return "jaxformer prepare " + " ".join(words)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


# -- The writer -------------------------------------------------------------------------------------------------------


def prepare(
    source: str,
    tokenizer: str,
    out: str | os.PathLike,
    *,
    validation_fraction: float = 0.0,
    vocab_size: int | None = None,
    workers: int | None = None,
    shard_mb: float = DEFAULT_SHARD_MB,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    tokenizer_sample_mb: float = DEFAULT_TOKENIZER_SAMPLE_MB,
    feature: str = "text",
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> PreparedCorpus:
    """Tokenizes a corpus into ArrayRecord shards in `out` (see the module docstring); returns `open_prepared(out)`.

    Rerun with the same arguments after an interruption, it keeps the finished shards and writes the rest; a
    finished directory is returned as it is. A directory prepared (or being prepared) from another request is
    refused.

    Args:
      source: "tfds:NAME" (every split of a prepared TFDS dataset, each under its own name), "tfds:NAME:SPLIT" (that
        split, as "train") or "text:GLOB" (the matching files, sorted by path: one document each, as "train").
      tokenizer: "char" (the sorted distinct characters of every prepared split: a first pass reads the corpus),
        "byte", "sentencepiece" (trained on the first `tokenizer_sample_mb` MB of the train split, with
        `vocab_size` pieces) or "hf:DIR_OR_ID" (a pretrained tokenizer.json, `jaxformer.pretrained.load_tokenizer`).
      out: the directory to write.
      validation_fraction: in [0, 1): the share of the train text (by bytes, cut at the next line start) that becomes
        the "validation" split; 0 = none. Not with "tfds:NAME", whose splits are the dataset's own.
      vocab_size: the sentencepiece vocabulary (required for it, refused for the others).
      workers: processes that tokenize shards in parallel; default os.cpu_count(). 1 runs in this process.
      shard_mb: MB (10^6 bytes) of text per shard, about: what one worker holds in memory at a time.
      chunk_tokens: tokens per ArrayRecord record (a shard's last record may be shorter).
      tokenizer_sample_mb: MB of train text that a sentencepiece tokenizer is trained on.
      feature: the text feature of a TFDS record.
      data_dir: the TFDS data directory; default `data.default_data_dir()` ($TFDS_DATA_DIR).
      progress: show tqdm progress bars (on stderr).

    Raises:
      ValueError: a bad argument (named, with the value received), a request that differs from the one `out` holds,
        a source that changed since the interrupted run, text that is not UTF-8 or does not encode.
      DatasetNotPreparedError (a FileNotFoundError): the TFDS dataset is not prepared in `data_dir`.
    """
    kind, target, tfds_split = _parse_source(source)
    vocab_size = _check_tokenizer_name(tokenizer, vocab_size)
    if not isinstance(out, str | os.PathLike) or not os.fspath(out):
        raise ValueError(f"`out` must be a directory path; got {out!r}.")
    validation_fraction = _check_number("validation_fraction", validation_fraction, low=0.0, high=1.0, low_open=False)
    workers = _check_positive("workers", (os.cpu_count() or 1) if workers is None else workers)
    shard_mb = _check_number("shard_mb", shard_mb, low=0.0)
    chunk_tokens = _check_positive("chunk_tokens", chunk_tokens)
    tokenizer_sample_mb = _check_number("tokenizer_sample_mb", tokenizer_sample_mb, low=0.0)
    if not isinstance(feature, str) or not feature:
        raise ValueError(f"`feature` must be the name of a TFDS text feature, e.g. 'text'; got {feature!r}.")
    if kind == "tfds" and tfds_split is None and validation_fraction > 0:
        raise ValueError(
            f"`validation_fraction`={validation_fraction} needs a single-split source; `source`={source!r} prepares "
            f"every split of the dataset under its own name. Pass tfds:{target}:SPLIT to cut one split in two."
        )
    directory = os.path.abspath(os.path.expanduser(os.fspath(out)))
    request = {
        "format": FORMAT,
        "source": source,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
        "validation_fraction": validation_fraction,
        "shard_mb": shard_mb,
        "chunk_tokens": chunk_tokens,
        "tokenizer_sample_mb": tokenizer_sample_mb,
        "feature": feature,
    }
    previous = _check_directory(directory, request)
    if previous is not None and os.path.exists(os.path.join(directory, METADATA_FILE)):
        if progress:
            print(f"{directory} is already prepared ({METADATA_FILE} exists); nothing to do.", file=sys.stderr)
        return open_prepared(directory)

    runner = _Runner(workers)
    try:
        plans = _plan(kind, target, tfds_split, data_dir, feature, validation_fraction, shard_mb, runner, progress,
                      directory)  # fmt: skip
        plan_sha256 = hashlib.sha256(json.dumps([p.describe() for p in plans]).encode()).hexdigest()
        if previous is not None and previous.get("plan_sha256") != plan_sha256:
            raise ValueError(
                f"The source {source!r} changed since the unfinished preparation in {directory} started (its files, "
                f"their sizes or the records differ), so the finished shards no longer match it. Delete {directory} "
                f"(or pass another `out`) to prepare it from scratch."
            )
        os.makedirs(directory, exist_ok=True)
        if previous is None:
            _write_json(os.path.join(directory, REQUEST_FILE), {**request, "plan_sha256": plan_sha256})
        for name in os.listdir(directory):  # what an interrupted run was writing
            if name.endswith(".tmp"):
                os.remove(os.path.join(directory, name))

        tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
        if os.path.exists(tokenizer_path):
            tok = tokenizer_from_dict(_read_json(tokenizer_path))  # a resumed run: the same tokenizer as before
        else:
            tok = _make_tokenizer(tokenizer, vocab_size, tokenizer_sample_mb, plans, runner, progress)
            _write_json(tokenizer_path, tok.to_dict())
        tokenizer_sha256 = _sha256_file(tokenizer_path)
        dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
        key = hashlib.sha256(f"{plan_sha256}/{tokenizer_sha256}/{chunk_tokens}/{dtype}".encode()).hexdigest()

        markers = _write_shards(directory, plans, key, chunk_tokens, dtype, tokenizer_path, tokenizer_sha256, runner,
                                progress)  # fmt: skip
    finally:
        runner.close()

    splits = {}
    for plan in plans:
        shards = [markers[(plan.name, i)] for i in range(len(plan.shards))]
        splits[plan.name] = {
            "tokens": sum(m["tokens"] for m in shards),
            "documents": sum(m["documents"] for m in shards),
            "shards": [{k: m[k] for k in ("file", "tokens", "records", "documents", "sha256", "docs_sha256")}
                       for m in shards],
        }  # fmt: skip
    metadata = {
        "format": FORMAT,
        "source": source,
        "tokenizer": tok.to_dict(),
        "vocab_size": int(tok.vocab_size),
        "dtype": dtype,
        "chunk_tokens": chunk_tokens,
        "validation_fraction": validation_fraction if kind == "text" or tfds_split is not None else None,
        "splits": splits,
    }
    _write_json(os.path.join(directory, METADATA_FILE), metadata)
    return open_prepared(directory)


def _check_directory(directory: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The request stored in `directory` when it equals `request` (a rerun), None for a new or empty directory;
    raises ValueError for a directory of another request or of something else."""
    if not os.path.exists(directory):
        return None
    if not os.path.isdir(directory):
        raise ValueError(f"`out`={directory!r} exists and is not a directory.")
    path = os.path.join(directory, REQUEST_FILE)
    if not os.path.exists(path):
        if os.listdir(directory):
            raise ValueError(
                f"`out`={directory!r} is not empty and holds no {REQUEST_FILE}, so it is not a corpus that jaxformer "
                f"prepare started; pass a new or empty directory."
            )
        return None
    stored = _read_json(path)
    differs = {k: (stored.get(k), v) for k, v in request.items() if stored.get(k) != v}
    if differs:
        state = "prepared" if os.path.exists(os.path.join(directory, METADATA_FILE)) else "partly prepared"
        what = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differs.items())
        raise ValueError(
            f"{directory} was {state} from another request ({what}): refusing to mix them. Rerun the stored request "
            f"(`{_command(stored, directory)}`), or pass another `out`, or delete {directory}."
        )
    return stored


def _plan(kind, target, tfds_split, data_dir, feature, fraction, shard_mb, runner, progress, out):
    """The split plans of the source."""
    shard_bytes = max(1, int(shard_mb * _MB))
    if kind == "text":
        named = [("train", _TextFiles(_text_paths(target, out)))]
    else:
        from jaxformer.data.sources import default_data_dir

        data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir))) if data_dir else default_data_dir()
        if tfds_split is None:
            named = [(s, _TfdsRecords(target, s, data_dir, feature)) for s in _tfds_split_names(target, data_dir)]
        else:
            named = [("train", _TfdsRecords(target, tfds_split, data_dir, feature))]
    plans = []
    for name, docs in named:
        sizes = _document_sizes(docs, runner, progress, name)
        cum = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(cum[-1])
        if total == 0:
            raise ValueError(f"The {name!r} split of `source` has no text (all its documents are empty).")
        parts = [(name, 0, total)]
        if fraction > 0:
            cut = _next_line_start(docs, cum, math.floor((1.0 - fraction) * total))
            for empty, what in ((cut == 0, "train"), (cut == total, "validation")):
                if empty:
                    raise ValueError(
                        f"`validation_fraction`={fraction} leaves the {what} split empty: the cut at byte "
                        f"{math.floor((1 - fraction) * total)} of {total} moves to the next line start, byte {cut}. "
                        f"Use a text with more lines or another fraction."
                    )
            parts = [("train", 0, cut), ("validation", cut, total)]
        for part, begin, end in parts:
            plans.append(_SplitPlan(part, docs, cum, begin, end, _shard_ranges(docs, cum, begin, end, shard_bytes)))
    return plans


def _document_sizes(docs, runner: _Runner, progress: bool, name: str) -> np.ndarray:
    if isinstance(docs, _TextFiles):
        return docs.sizes()
    n = len(docs)
    step = max(1, math.ceil(n / (4 * runner.workers)))
    ranges = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    sizes = np.zeros(n, np.int64)
    with _progress(progress, n, f"{name}: sizing records", unit="rec") as bar:
        for i, got in runner.run(_record_sizes, [(docs, lo, hi) for lo, hi in ranges]):
            sizes[ranges[i][0] : ranges[i][1]] = got
            bar.update(got.size)
    return sizes


def _make_tokenizer(name, vocab_size, sample_mb, plans, runner, progress) -> Tokenizer:
    if name == "byte":
        return ByteTokenizer()
    if name.startswith("hf:"):
        from jaxformer import pretrained

        return pretrained.load_tokenizer(name.removeprefix("hf:"))
    if name == "char":
        jobs = [(plan.docs, plan.shard_spec(i)) for plan in plans for i in range(len(plan.shards))]
        total = sum(spec[1] - spec[0] for _, spec in jobs)
        chars: set[str] = set()
        with _progress(progress, total, "char vocabulary") as bar:
            for i, got in runner.run(_segment_chars, jobs):
                chars.update(got)
                bar.update(jobs[i][1][1] - jobs[i][1][0])
        return CharTokenizer("".join(sorted(chars)))
    from jaxformer.data.tokenizers import SentencePieceTokenizer

    train = next(p for p in plans if p.name == "train")
    budget, texts = int(sample_mb * _MB), []
    for i in range(len(train.shards)):
        if budget <= 0:
            break
        for doc, start, end, _ in _segments(*train.shard_spec(i)):
            if budget <= 0:
                break
            if end - start > budget:
                end = _line_start(train.docs, doc, start + budget, end)
            texts.append(_decode(train.docs, doc, start, end))
            budget -= end - start
    if progress:
        print(f"Training a sentencepiece tokenizer ({vocab_size} pieces) on {sum(map(len, texts)):,} characters",
              file=sys.stderr)  # fmt: skip
    return SentencePieceTokenizer.train("\n".join(texts), vocab_size=vocab_size)


def _write_shards(directory, plans, key, chunk_tokens, dtype, tokenizer_path, tokenizer_sha256, runner, progress):
    markers: dict[tuple[str, int], dict[str, Any]] = {}
    jobs, job_ids = [], []
    total = done_bytes = 0
    for plan in plans:
        for i in range(len(plan.shards)):
            stem, size = plan.shard_stem(i), plan.shard_bytes(i)
            total += size
            marker = _finished_marker(directory, stem, key)
            if marker is not None:
                markers[(plan.name, i)] = marker
                done_bytes += size
                continue
            jobs.append((directory, stem, plan.docs, plan.shard_spec(i), chunk_tokens, dtype, tokenizer_path,
                         tokenizer_sha256, key))  # fmt: skip
            job_ids.append((plan.name, i, size))
    with _progress(progress, total, "tokenizing", initial=done_bytes) as bar:
        if markers and progress:
            bar.write(f"Resuming: {len(markers)} finished shards kept, {len(jobs)} to write.")
        for j, marker in runner.run(_write_shard, jobs):
            name, i, size = job_ids[j]
            markers[(name, i)] = marker
            bar.update(size)
    return markers


# -- The reader -------------------------------------------------------------------------------------------------------


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
                    got = _sha256_file(os.path.join(self.directory, file))
                    if got != expected:
                        raise ValueError(
                            f"{os.path.join(self.directory, file)} (split {name!r}) is damaged: sha256 {got}, expected "
                            f"{expected}. Delete it and {METADATA_FILE}, then run `{self._command()}` again to "
                            f"rewrite it."
                        )

    def _command(self) -> str:
        request = _stored_request(self.directory)
        return _command(request, self.directory) if request else "jaxformer prepare ..."

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v['tokens']}" for k, v in self.metadata["splits"].items())
        return f"PreparedCorpus({self.directory}, vocab_size={self.vocab_size}, tokens: {sizes})"


def _stored_request(directory: str) -> dict[str, Any] | None:
    try:
        return _read_json(os.path.join(directory, REQUEST_FILE))
    except (OSError, ValueError):
        return None


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
    request = _stored_request(directory)
    again = f"run `{_command(request, directory)}` again" if request else "run jaxformer prepare again"
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
        metadata = _read_json(path)
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
