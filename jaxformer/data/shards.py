"""The shards of `jaxformer prepare`: which bytes of which documents make each shard (the plan), and the jobs that
worker processes run on them (the characters of a shard; tokenizing a shard and writing its files).

A shard holds about `shard_mb` MB of text, cut at line ends, so that a 2 GB file streams through one shard at a
time and a subword tokenizer sees whole lines. Each document is tokenized on its own (no token spans two
documents); documents without text are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from jaxformer.data.prepared import sha256_file
from jaxformer.data.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

WRITER_OPTIONS = "group_size:1"  # one record per chunk: a random read decompresses just that record


# -- The plan: which bytes of which documents make each shard -------------------------------------------------------

# Positions are bytes of the source's documents joined in order (`cum[d]`: where document d begins). A split is a
# range of them, a shard a range inside its split: O(1) memory per shard, however many documents it holds. A worker
# turns its shard into segments [doc, start, end, starts_document] (bytes [start, end) of a document;
# starts_document: a document of the split begins there, as the split's first segment always does).


@dataclasses.dataclass
class SplitPlan:
    name: str
    docs: Any  # sources.TextFiles | sources.TfdsRecords
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


def segments_of(begin: int, end: int, split_begin: int, first: int, cum: np.ndarray) -> list[list]:
    """The segments of the bytes [begin, end) (see above)."""
    out = []
    for k in range(cum.size - 1):
        a, b = max(begin, int(cum[k])), min(end, int(cum[k + 1]))
        if b > a:
            out.append([first + k, a - int(cum[k]), b - int(cum[k]), a == cum[k] or a == split_begin])
    return out


def next_line_start(docs, cum: np.ndarray, pos: int) -> int:
    """The first line start at or after `pos` in the joined documents (a document's start is one)."""
    doc = int(np.searchsorted(cum, pos, side="right")) - 1
    if doc >= cum.size - 1 or pos == cum[doc]:
        return pos
    return int(cum[doc]) + docs.line_start(doc, pos - int(cum[doc]), int(cum[doc + 1] - cum[doc]))


def shard_ranges(docs, cum: np.ndarray, begin: int, end: int, target: int) -> list[tuple[int, int]]:
    """[begin, end) in ranges of about `target` bytes, each ending at a line start."""
    ranges, pos = [], begin
    while pos < end:
        stop = end if pos + target >= end else min(end, next_line_start(docs, cum, pos + target))
        ranges.append((pos, stop))
        pos = stop
    return ranges


# -- Jobs of the worker processes -------------------------------------------------------------------------------------


def segment_chars(docs, spec: tuple) -> str:
    """The distinct characters of a shard's text, sorted (the char vocabulary pass)."""
    chars: set[str] = set()
    for doc, start, end, _ in segments_of(*spec):
        chars.update(docs.text(doc, start, end))
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


def write_json(path: str, value: Any) -> None:
    """Writes JSON atomically: a temporary file, then os.replace."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(
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
    segments = segments_of(*spec)
    texts = [docs.text(doc, start, end) for doc, start, end, _ in segments]
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
        "sha256": sha256_file(f"{records_path}.tmp"),
        "docs_sha256": sha256_file(f"{docs_path}.tmp"),
        "file_bytes": os.path.getsize(f"{records_path}.tmp"),
        "text_bytes": int(sum(end - start for _, start, end, _ in segments)),
        "key": key,
    }
    os.replace(f"{records_path}.tmp", records_path)
    os.replace(f"{docs_path}.tmp", docs_path)
    write_json(os.path.join(directory, f"{stem}.done.json"), marker)
    return marker


def finished_marker(directory: str, stem: str, key: str) -> dict[str, Any] | None:
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
