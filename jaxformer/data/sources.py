"""Where the raw data comes from: prepared TFDS datasets (random access, no TensorFlow) and local text files.

    text = tfds_text("tiny_shakespeare", "train")               # reads $TFDS_DATA_DIR/tiny_shakespeare/1.0.0/
    text = text_file("input.txt")

TFDS datasets are read with `tfds.data_source`'s machinery: array_record files opened for random access, so
no TensorFlow is needed. A dataset that is not prepared in the data directory is fetched and prepared there only
if jaxformer knows how (`jaxformer.data.download.DATASETS`: tiny_shakespeare), so that `make run` works on a fresh
machine: its raw file is downloaded (from `$JAXFORMER_MIRROR` if set), its sha256 checked, and the same files
tfds writes are written. Pass `download=False` or set `JAXFORMER_NO_DOWNLOAD=1` to never download. Any other
dataset that is not prepared, or a failed download, raises `DatasetNotPreparedError`, which says where it looked
and how to prepare it. (`tfds.data_source` would try to download and build any dataset, which needs TensorFlow,
fails on a machine without internet after a long wait, or silently fills the disk on one with it.)
`tensorflow_datasets` is imported on first use, so `import jaxformer.data` stays fast.
"""

from __future__ import annotations

import os
from typing import Any

from jaxformer.data import download as download_lib

_TEXT_FEATURE = "text"
_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


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
      ValueError: `split` names no split of the dataset.
    """
    import tensorflow_datasets as tfds  # lazy: importing tfds costs ~1 s

    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a TFDS dataset name such as 'tiny_shakespeare'; got {name!r}.")
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a split name such as 'train'; got {split!r}.")
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
    pieces = []
    for i in range(len(source)):
        record = source[i]
        if feature not in record:
            raise ValueError(
                f"Records of TFDS dataset {name!r} have no feature {feature!r}; pass feature= one of {sorted(record)}."
            )
        value = record[feature]
        pieces.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return separator.join(pieces)


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
