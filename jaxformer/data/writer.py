"""`jaxformer prepare`: tokenizes a corpus once into ArrayRecord shards (the format: data/prepared.py).

    prepare("text:corpus/*.txt", "byte", "prepared/")                  # train + 10% validation; `jaxformer prepare`
    prepare("tfds:tiny_shakespeare", "char", "prepared/shakespeare")   # the dataset's own splits

The steps: check the request against what `out` holds (a rerun resumes it, another request is refused); plan the
splits and their shards (data/shards.py) over the source's documents (data/sources.py); make the tokenizer
(`tokenizers.make_tokenizer`, fitted to the corpus) and write it; tokenize and write the shards in worker
processes (data/workers.py), skipping those a previous run finished; write metadata.json last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from typing import Any

import numpy as np

from jaxformer import checks
from jaxformer.data import shards, sources
from jaxformer.data.prepared import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_FEATURE,
    DEFAULT_SHARD_MB,
    DEFAULT_TOKENIZER_SAMPLE_MB,
    FORMAT,
    METADATA_FILE,
    REQUEST_FILE,
    TOKENIZER_FILE,
    PreparedCorpus,
    check_directory,
    check_out_and_fraction,
    open_prepared,
    read_json,
    sha256_file,
)
from jaxformer.data.tokenizers import (
    SentencePieceTokenizer,
    Tokenizer,
    check_tokenizer,
    make_tokenizer,
    tokenizer_from_dict,
)
from jaxformer.data.workers import WorkerPool, progress_bar

_MB = 1_000_000


def prepare(
    source: str,
    tokenizer: str,
    out: str | os.PathLike,
    *,
    validation_fraction: float | None = None,
    vocab_size: int | None = None,
    workers: int | None = None,
    shard_mb: float = DEFAULT_SHARD_MB,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    tokenizer_sample_mb: float = DEFAULT_TOKENIZER_SAMPLE_MB,
    feature: str = DEFAULT_FEATURE,
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
        `vocab_size` pieces) or "hf:DIR_OR_ID" (a pretrained tokenizer.json, `HFTokenizer.from_pretrained`).
      out: the directory to write.
      validation_fraction: in [0, 1): the share of the train text (by bytes, cut at the next line start) that becomes
        the "validation" split; 0 = none. None (the default): `prepared.DEFAULT_VALIDATION_FRACTION` (0.1) for
        "text:GLOB" and "tfds:NAME:SPLIT"; none for "tfds:NAME", whose splits are the dataset's own (and which
        takes no other).
      vocab_size: the sentencepiece vocabulary (required for it, refused for the others).
      workers: processes that tokenize shards in parallel; default os.cpu_count(). 1 runs in this process.
      shard_mb: MB (10^6 bytes) of text per shard, about: what one worker holds in memory at a time.
      chunk_tokens: tokens per ArrayRecord record (a shard's last record may be shorter).
      tokenizer_sample_mb: MB of train text that a sentencepiece tokenizer is trained on.
      feature: the text feature of a TFDS record.
      data_dir: the TFDS data directory; default `data.default_data_dir()` ($TFDS_DATA_DIR).
      progress: show tqdm progress bars (on stderr).

    Raises:
      ValueError: a bad argument value (named, with the value received), a request that differs from the one `out`
        holds, a source that changed since the interrupted run, text that is not UTF-8 or does not encode.
      TypeError: an argument of the wrong kind (a number for `source`, a string for `shard_mb`, ...).
      DatasetNotPreparedError (a FileNotFoundError): the TFDS dataset is not prepared in `data_dir`.
    """
    kind, target, tfds_split = sources.parse_source(source)
    vocab_size = _check_tokenizer(tokenizer, vocab_size)
    directory, validation_fraction = check_out_and_fraction(source, out, validation_fraction)
    workers = checks.check_positive_int("workers", (os.cpu_count() or 1) if workers is None else workers)
    shard_mb = checks.check_positive_real("shard_mb", shard_mb)
    chunk_tokens = checks.check_positive_int("chunk_tokens", chunk_tokens)
    tokenizer_sample_mb = checks.check_positive_real("tokenizer_sample_mb", tokenizer_sample_mb)
    if not isinstance(feature, str):
        raise TypeError(f"`feature` must be the name of a TFDS text feature, a str; got {feature!r:.80}.")
    if not feature:
        raise ValueError(f"`feature` must be the name of a TFDS text feature, e.g. 'text'; got {feature!r}.")
    if kind == "tfds" and tfds_split is None and validation_fraction > 0:
        raise ValueError(
            f"`validation_fraction`={validation_fraction} needs a single-split source; `source`={source!r} prepares "
            f"every split of the dataset under its own name. Pass tfds:{target}:SPLIT to cut one split in two."
        )
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
    previous = check_directory(directory, request)
    if previous is not None and os.path.exists(os.path.join(directory, METADATA_FILE)):
        if progress:
            print(f"{directory} is already prepared ({METADATA_FILE} exists); nothing to do.", file=sys.stderr)
        return open_prepared(directory)

    with WorkerPool(workers) as pool:
        plans = _plan(kind, target, tfds_split, data_dir, feature, validation_fraction, shard_mb, pool, progress,
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
            shards.write_json(os.path.join(directory, REQUEST_FILE), {**request, "plan_sha256": plan_sha256})
        for name in os.listdir(directory):  # what an interrupted run was writing
            if name.endswith(".tmp"):
                os.remove(os.path.join(directory, name))

        tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
        if os.path.exists(tokenizer_path):
            tok = tokenizer_from_dict(read_json(tokenizer_path))  # a resumed run: the same tokenizer as before
        else:
            tok = _fit_tokenizer(tokenizer, vocab_size, tokenizer_sample_mb, plans, pool, progress)
            shards.write_json(tokenizer_path, tok.to_dict())
        tokenizer_sha256 = sha256_file(tokenizer_path)
        dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
        key = hashlib.sha256(f"{plan_sha256}/{tokenizer_sha256}/{chunk_tokens}/{dtype}".encode()).hexdigest()

        markers = _write_shards(directory, plans, key, chunk_tokens, dtype, tokenizer_path, tokenizer_sha256, pool,
                                progress)  # fmt: skip

    splits = {}
    for plan in plans:
        done = [markers[(plan.name, i)] for i in range(len(plan.shards))]
        splits[plan.name] = {
            "tokens": sum(m["tokens"] for m in done),
            "documents": sum(m["documents"] for m in done),
            "shards": [{k: m[k] for k in ("file", "tokens", "records", "documents", "sha256", "docs_sha256")}
                       for m in done],
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
    shards.write_json(os.path.join(directory, METADATA_FILE), metadata)
    return open_prepared(directory)


def _check_tokenizer(tokenizer, vocab_size) -> int | None:
    """`tokenizers.check_tokenizer`, and `vocab_size` refused where it would be ignored: a request says one thing."""
    if vocab_size is not None and isinstance(tokenizer, str) and tokenizer != SentencePieceTokenizer.type_name:
        check_tokenizer(tokenizer)  # a bad name is the first thing to say
        raise ValueError(
            f"`vocab_size`={vocab_size!r} applies only to tokenizer 'sentencepiece'; the {tokenizer!r} "
            f"vocabulary is given (byte, hf:) or read from the corpus (char). Leave it out."
        )
    return check_tokenizer(tokenizer, vocab_size)


def _plan(kind, target, tfds_split, data_dir, feature, fraction, shard_mb, pool, progress, out):
    """The split plans of the source."""
    shard_bytes = max(1, int(shard_mb * _MB))
    if kind == "text":
        named = [("train", sources.TextFiles(sources.text_paths(target, exclude=out)))]
    else:
        data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir))) if data_dir else sources.default_data_dir()
        if tfds_split is None:
            named = [(s, sources.TfdsRecords(target, s, data_dir, feature))
                     for s in sources.tfds_split_names(target, data_dir)]  # fmt: skip
        else:
            named = [("train", sources.TfdsRecords(target, tfds_split, data_dir, feature))]
    plans = []
    for name, docs in named:
        sizes = _document_sizes(docs, pool, progress, name)
        cum = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(cum[-1])
        if total == 0:
            raise ValueError(f"The {name!r} split of `source` has no text (all its documents are empty).")
        parts = [(name, 0, total)]
        if fraction > 0:
            cut = shards.next_line_start(docs, cum, math.floor((1.0 - fraction) * total))
            for empty, what in ((cut == 0, "train"), (cut == total, "validation")):
                if empty:
                    raise ValueError(
                        f"`validation_fraction`={fraction} leaves the {what} split empty: the cut at byte "
                        f"{math.floor((1 - fraction) * total)} of {total} moves to the next line start, byte {cut}. "
                        f"Use a text with more lines, or another fraction (0: no validation split)."
                    )
            parts = [("train", 0, cut), ("validation", cut, total)]
        for part, begin, end in parts:
            ranges = shards.shard_ranges(docs, cum, begin, end, shard_bytes)
            plans.append(shards.SplitPlan(part, docs, cum, begin, end, ranges))
    return plans


def _document_sizes(docs, pool: WorkerPool, progress: bool, name: str) -> np.ndarray:
    if isinstance(docs, sources.TextFiles):
        return docs.sizes()
    n = len(docs)
    step = max(1, math.ceil(n / (4 * pool.workers)))
    ranges = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    sizes = np.zeros(n, np.int64)
    with progress_bar(progress, n, f"{name}: sizing records", unit="rec") as bar:
        for i, got in pool.run(sources.TfdsRecords.record_sizes, [(docs, lo, hi) for lo, hi in ranges]):
            sizes[ranges[i][0] : ranges[i][1]] = got
            bar.update(got.size)
    return sizes


def _fit_tokenizer(name, vocab_size, sample_mb, plans, pool, progress) -> Tokenizer:
    """`make_tokenizer(name)` fitted to the corpus: "char" to the characters of every split (a parallel pass, so
    that every split encodes), "sentencepiece" to the first `sample_mb` MB of the train split."""
    text = None
    if name == "char":
        jobs = [(plan.docs, plan.shard_spec(i)) for plan in plans for i in range(len(plan.shards))]
        total = sum(spec[1] - spec[0] for _, spec in jobs)
        chars: set[str] = set()
        with progress_bar(progress, total, "char vocabulary") as bar:
            for i, got in pool.run(shards.segment_chars, jobs):
                chars.update(got)
                bar.update(jobs[i][1][1] - jobs[i][1][0])
        text = "".join(sorted(chars))
    elif name == SentencePieceTokenizer.type_name:
        train = next(p for p in plans if p.name == "train")
        budget, texts = int(sample_mb * _MB), []
        for i in range(len(train.shards)):
            if budget <= 0:
                break
            for doc, start, end, _ in shards.segments_of(*train.shard_spec(i)):
                if budget <= 0:
                    break
                if end - start > budget:
                    end = train.docs.line_start(doc, start + budget, end)
                texts.append(train.docs.text(doc, start, end))
                budget -= end - start
        text = "\n".join(texts)
        if progress:
            print(f"Training a sentencepiece tokenizer ({vocab_size} pieces) on {sum(map(len, texts)):,} characters",
                  file=sys.stderr)  # fmt: skip
    return make_tokenizer(name, text, vocab_size=vocab_size)


def _write_shards(directory, plans, key, chunk_tokens, dtype, tokenizer_path, tokenizer_sha256, pool, progress):
    markers: dict[tuple[str, int], dict[str, Any]] = {}
    jobs, job_ids = [], []
    total = done_bytes = 0
    for plan in plans:
        for i in range(len(plan.shards)):
            stem, size = plan.shard_stem(i), plan.shard_bytes(i)
            total += size
            marker = shards.finished_marker(directory, stem, key)
            if marker is not None:
                markers[(plan.name, i)] = marker
                done_bytes += size
                continue
            jobs.append((directory, stem, plan.docs, plan.shard_spec(i), chunk_tokens, dtype, tokenizer_path,
                         tokenizer_sha256, key))  # fmt: skip
            job_ids.append((plan.name, i, size))
    with progress_bar(progress, total, "tokenizing", initial=done_bytes) as bar:
        if markers and progress:
            bar.write(f"Resuming: {len(markers)} finished shards kept, {len(jobs)} to write.")
        for j, marker in pool.run(shards.write_shard, jobs):
            name, i, size = job_ids[j]
            markers[(name, i)] = marker
            bar.update(size)
    return markers
