"""Where the raw data comes from: prepared TFDS datasets (random access, no TensorFlow) and local text files.

    text = tfds_text("tiny_shakespeare", "train")               # reads $TFDS_DATA_DIR/tiny_shakespeare/1.0.0/
    text = text_file("input.txt")
    docs = TextFiles(text_paths("corpus/*.txt"))                # documents read by byte range (jaxformer prepare)
    docs = TfdsRecords("tiny_shakespeare", "train", data_dir, "text")

TFDS datasets are read with `tfds.data_source`'s machinery: array_record files opened for random access, so
no TensorFlow is needed. A dataset that is not prepared in the data directory is fetched and prepared there only
if jaxformer knows how (`jaxformer.data.download.DATASETS`: tiny_shakespeare), so that `make run` works on a fresh
machine: its raw file is downloaded (from `$JAXFORMER_MIRROR` if set), its sha256 checked, and the same files
tfds writes are written. Pass `download=False` or set `JAXFORMER_NO_DOWNLOAD=1` to never download. Any other
dataset that is not prepared, or a failed download, raises `DatasetNotPreparedError`, which says where it looked
and how to prepare it. (`tfds.data_source` would try to download and build any dataset, which needs TensorFlow,
fails on a machine without internet after a long wait, or silently fills the disk on one with it.)
`tensorflow_datasets` is imported on first use, so `import jaxformer.data` stays fast.

`jaxformer prepare` names its source "text:GLOB" or "tfds:NAME[:SPLIT]" (`parse_source`) and reads it as documents
(`TextFiles`: one file each; `TfdsRecords`: one record's text feature each), by byte range, so that a 2 GB file
is read a shard at a time; both pickle small, for worker processes.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import numpy as np

from jaxformer.data import download as download_lib

_TEXT_FEATURE = "text"
_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")
SOURCE_FORMS = ("tfds:NAME[:SPLIT]", "text:GLOB")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_LINE_SEARCH_BLOCK = 1 << 16


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared (in a random-access format) in the data directory searched."""


def default_data_dir() -> str:
    """The TFDS data directory used when none is given: `$TFDS_DATA_DIR`, else tfds's default (~/tensorflow_datasets).

    Read at call time, so setting `os.environ["TFDS_DATA_DIR"]` after import takes effect.
    """
    env = os.environ.get("TFDS_DATA_DIR")
    if env:
        return os.path.expanduser(env)
    from tensorflow_datasets.core import constants  # lazy: importing tfds costs ~1 s

    return os.path.expanduser(constants.DATA_DIR)


def _how_to_prepare(name: str, data_dir: str) -> str:
    base = name.split(":")[0]
    return (
        f"To fix: set the TFDS_DATA_DIR environment variable, or pass data_dir=, to a directory that holds "
        f"{base}/<version>/ (the dataset_info.json and *.array_record-* files); or prepare it on a machine with "
        f"internet with `tfds build {base} --data_dir={data_dir} --file_format=array_record` (or, in Python, "
        f"`tfds.builder({base!r}, data_dir={data_dir!r}, file_format='array_record').download_and_prepare()`) "
        f"and copy {data_dir}/{base}/ to this machine."
    )


def tfds_source(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None, download: bool | None = None
) -> Any:
    """The random-access data source of a prepared TFDS dataset split (what `tfds.data_source` returns).

    If the dataset is not prepared in `data_dir` and jaxformer knows how to fetch it (tiny_shakespeare; see
    `jaxformer.data.download`), it is downloaded (from `$JAXFORMER_MIRROR` if set) and prepared there first, once.
    Any other dataset is never downloaded or prepared.

    Args:
      name: TFDS name, optionally with config and version: "tiny_shakespeare", "wmt14_translate/de-en:1.0.0".
      split: a split name ("train", "validation", ...) or a TFDS split expression ("train[:10%]").
      data_dir: directory holding `<name>/<version>/`; defaults to `default_data_dir()` ($TFDS_DATA_DIR).
      download: whether a missing dataset jaxformer knows may be downloaded; None (default): yes, unless the
        environment variable JAXFORMER_NO_DOWNLOAD is set (to anything but "", "0", "false", "no").

    Returns:
      a sequence-like source: `len(source)` records, `source[i]` a dict of features (text as bytes).

    Raises:
      DatasetNotPreparedError (a FileNotFoundError): the dataset is not prepared in `data_dir` (and could not,
        or may not, be downloaded), or was prepared in a format without random access (tfrecord).
      download.ChecksumError: the downloaded file is not the expected one (nothing is kept).
      ValueError: `split` names no split of the dataset (or `name` / `split` is empty).
      TypeError: `name` or `split` is no string.
    """
    import tensorflow_datasets as tfds  # lazy: importing tfds costs ~1 s

    if not isinstance(name, str) or not name:
        message = f"`name` must be a TFDS dataset name such as 'tiny_shakespeare'; got {name!r}."
        raise (ValueError if isinstance(name, str) else TypeError)(message)
    if not isinstance(split, str) or not split:
        message = f"`split` must be a split name such as 'train'; got {split!r}."
        raise (ValueError if isinstance(split, str) else TypeError)(message)
    data_dir = os.fspath(os.path.expanduser(data_dir)) if data_dir is not None else default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        # Neither a registered builder nor found on disk; tfds's own message lists every dataset it knows.
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} was not found in {data_dir} (searched {os.path.join(data_dir, name)}), and tfds "
            f"has no builder of that name to describe it: check the spelling. "
            f"{_how_to_prepare(name, data_dir)}"
        ) from None
    if not builder.is_prepared():
        missing = (
            f"TFDS dataset {name!r} is not prepared in {data_dir} (looked for {builder.data_path}/dataset_info.json)."
        )
        remote = download_lib.registered(name)
        if remote is None:
            raise DatasetNotPreparedError(
                f"{missing} jaxformer downloads only {sorted(download_lib.DATASETS)}; nothing is downloaded for "
                f"{name!r}. {_how_to_prepare(name, data_dir)}"
            )
        if download is False or (download is None and download_lib.downloads_disabled()):
            raise DatasetNotPreparedError(
                f"{missing} Downloading is turned off (download=False or {download_lib.NO_DOWNLOAD_ENV}=1). "
                f"{_how_to_prepare(name, data_dir)}"
            )
        try:
            download_lib.prepare(name, data_dir)
        except download_lib.ChecksumError:
            raise
        except download_lib.DownloadError as err:
            mirror_help = download_lib.mirror_help(remote, download_lib.source_url(remote))
            raise DatasetNotPreparedError(
                f"{missing} jaxformer tried to fetch it: {err}. {mirror_help} "
                f"Or set {download_lib.NO_DOWNLOAD_ENV}=1 and prepare it yourself. {_how_to_prepare(name, data_dir)}"
            ) from err
        builder = tfds.builder(name, data_dir=data_dir)
    file_format = getattr(builder.info.file_format, "value", str(builder.info.file_format))
    if file_format not in _RANDOM_ACCESS_FORMATS:
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} in {builder.data_path} is stored as {file_format}, which has no random access; "
            f"re-prepare it with file_format='array_record'. {_how_to_prepare(name, data_dir)}"
        )
    available = list(builder.info.splits)
    if "[" not in split and "+" not in split and split not in available:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; choose one of {available}.")
    return builder.as_data_source(split=split)


def tfds_text(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    feature: str = _TEXT_FEATURE,
    separator: str = "",
    download: bool | None = None,
) -> str:
    """All the text of a TFDS split: the `feature` of every record, decoded as UTF-8 and joined by `separator`.

    For tiny_shakespeare each split is a single record, so this is the whole split (train: 1,003,854 characters;
    validation and test: 55,770 each).

    Args:
      name, split, data_dir, download: as for `tfds_source` (tiny_shakespeare is downloaded on first use).
      feature: the text feature of each record.
      separator: put between consecutive records (e.g. "\\n\\n" between documents).

    Returns:
      the text, a str.
    """
    source = tfds_source(name, split, data_dir=data_dir, download=download)
    return separator.join(_feature_bytes(source[i], name, feature).decode("utf-8") for i in range(len(source)))


def _feature_bytes(record: dict[str, Any], name: str, feature: str) -> bytes:
    """The text `feature` of a TFDS record, as UTF-8 bytes."""
    if feature not in record:
        raise ValueError(
            f"Records of TFDS dataset {name!r} have no feature {feature!r}; pass `feature` one of {sorted(record)}."
        )
    value = record[feature]
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def text_file(path: str | os.PathLike, *, encoding: str = "utf-8") -> str:
    """The contents of a local text file.

    Args:
      path: the file (`~` is expanded).
      encoding: its text encoding.

    Raises:
      FileNotFoundError: `path` is not an existing file; the message gives the absolute path looked at.
    """
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(full):
        what = "is a directory, not a file" if os.path.isdir(full) else "does not exist"
        raise FileNotFoundError(
            f"Text file {os.fspath(path)!r} ({full}) {what}; pass `path` pointing to an existing text file."
        )
    with open(full, encoding=encoding) as f:
        return f.read()


# -- Sources of `jaxformer prepare`: documents read by byte range ----------------------------------------------------


def parse_source(source) -> tuple[str, str, str | None]:
    """A `jaxformer prepare` source as ("tfds", NAME, SPLIT or None) or ("text", GLOB, None).

    "tfds:NAME" (every split), "tfds:NAME:SPLIT" (one split; NAME may carry a config and a version,
    "wmt14_translate/de-en:1.0.0:train") or "text:GLOB".
    """
    if not isinstance(source, str):
        raise TypeError(f"`source` must be a str, one of {SOURCE_FORMS}; got {source!r:.80}.")
    if ":" not in source:
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


def text_paths(
    pattern: str,
    exclude: str | None = None,
    *,
    scheme: str = "text",
    files: str = "text files, e.g. 'text:corpus/*.txt'",
) -> list[str]:
    """The files that the glob `pattern` matches (`**` recurses), as sorted absolute paths, less any inside the
    directory `exclude` (an absolute path: where the output goes). ValueError when none is left, naming the source
    as `{scheme}:{pattern}` and what it should match (`files`)."""
    expanded = os.path.expanduser(pattern)
    paths = sorted(os.path.abspath(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    if exclude is not None:
        paths = [p for p in paths if not p.startswith(os.path.join(exclude, ""))]
    if not paths:
        raise ValueError(
            f"`source`='{scheme}:{pattern}' matches no file (glob {expanded!r}, relative to {os.getcwd()}); "
            f"pass a glob of {files}."
        )
    return paths


def tfds_split_names(name: str, data_dir: str) -> list[str]:
    """The splits of a TFDS dataset prepared in `data_dir` (fetched first if jaxformer knows how, as `tfds_source`
    does; else DatasetNotPreparedError saying what to do)."""
    import tensorflow_datasets as tfds  # lazy: importing tfds costs ~1 s

    def prepared_builder():
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            return builder if builder.is_prepared() else None
        except Exception:
            return None

    builder = prepared_builder()
    if builder is None:
        tfds_source(name, "train", data_dir=data_dir)  # fetches what jaxformer knows how to, else raises
        builder = prepared_builder()
    if builder is None:
        raise DatasetNotPreparedError(f"TFDS dataset {name!r} is not prepared in {data_dir}.")
    return list(builder.info.splits)


class _Documents:
    """Numbered documents of UTF-8 text, read by byte range: `read(doc, start, end)`, `where(doc)` (for errors) and
    `identity()` (what makes a source the same one, for resuming) are the subclass's."""

    def read(self, doc: int, start: int, end: int) -> bytes:
        raise NotImplementedError

    def where(self, doc: int) -> str:
        raise NotImplementedError

    def text(self, doc: int, start: int, end: int) -> str:
        """Bytes [start, end) of document `doc`, decoded; a ValueError naming the document where they are no UTF-8."""
        data = self.read(doc, start, end)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{self.where(doc)} is not UTF-8 text: {e.reason} at byte {start + e.start}. jaxformer prepare reads "
                f"UTF-8 only; convert the file (e.g. with iconv) or leave it out of the glob."
            ) from None

    def line_start(self, doc: int, pos: int, size: int) -> int:
        """The first line start at or after byte `pos` of document `doc` (of `size` bytes): `pos` itself when it
        follows a newline, else just after the next newline, else the document's end (the next one starts a line)."""
        if pos <= 0:
            return 0
        at = pos - 1
        while at < size:
            block = self.read(doc, at, min(size, at + _LINE_SEARCH_BLOCK))
            i = block.find(b"\n")
            if i >= 0:
                return at + i + 1
            at += len(block)
        return size


class TextFiles(_Documents):
    """Documents that are text files (UTF-8), one each."""

    def __init__(self, paths):
        self.paths = tuple(paths)

    def sizes(self) -> np.ndarray:
        """int64 [documents]: each file's size in bytes."""
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


class TfdsRecords(_Documents):
    """Documents that are the records of a prepared TFDS split: each record's text `feature` (UTF-8)."""

    def __init__(self, name: str, split: str, data_dir: str, feature: str):
        self.name, self.split, self.data_dir, self.feature = name, split, data_dir, feature
        self._last: tuple[int, bytes] | None = None  # the record read last: cuts search it several times

    def __getstate__(self):
        return {**self.__dict__, "_last": None}

    def _source(self):
        key = (self.name, self.split, self.data_dir)
        if key not in _TFDS_SOURCES:
            _TFDS_SOURCES[key] = tfds_source(self.name, self.split, data_dir=self.data_dir)
        return _TFDS_SOURCES[key]

    def __len__(self) -> int:
        return len(self._source())

    def record(self, doc: int) -> bytes:
        """The text of record `doc`, as bytes."""
        if self._last is not None and self._last[0] == doc:
            return self._last[1]
        value = _feature_bytes(self._source()[doc], self.name, self.feature)
        self._last = (doc, value)
        return value

    def record_sizes(self, lo: int, hi: int) -> np.ndarray:
        """int64 [hi - lo]: the sizes in bytes of records [lo, hi) (each is read: a job for worker processes)."""
        return np.array([len(self.record(i)) for i in range(lo, hi)], dtype=np.int64)

    def read(self, doc: int, start: int, end: int) -> bytes:
        return self.record(doc)[start:end]

    def where(self, doc: int) -> str:
        return f"record {doc} of tfds {self.name}:{self.split}"

    def identity(self) -> dict[str, Any]:
        return {"type": "tfds", "name": self.name, "split": self.split, "feature": self.feature}
