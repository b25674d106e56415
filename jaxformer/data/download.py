"""The datasets jaxformer can fetch and prepare itself, so that `make run` works on a fresh machine.

    from jaxformer.data import download
    download.prepare("tiny_shakespeare", "~/tensorflow_datasets")  # -> ".../tiny_shakespeare/1.0.0"

`sources.tfds_source` calls `prepare` when a dataset of `DATASETS` is not prepared in the data directory, and
reads the result as it reads any prepared TFDS dataset. The result is exactly what tfds writes (the directory
`<data_dir>/<name>/<version>/` with dataset_info.json, features.json and `<name>-<split>.array_record-*`):

  - where TensorFlow is importable (e.g. Colab) and no mirror is set, tfds's own builder does it
    (`download_and_prepare` with file_format="array_record");
  - otherwise (tfds's builders read their downloads with `tf.io.gfile`, so they need TensorFlow) the raw file is
    downloaded here, its sha256 checked against the one tfds registers for the dataset, split as the tfds builder
    splits it, and written with tfds's own TF-free pieces: its `SplitBuilder` (example encoding, tf.Example
    serialization, array_record shards) and `DatasetInfo.write_to_directory`. For tiny_shakespeare every file is
    byte-identical to what tfds's builder writes.

Nothing partial ever looks ready: the download goes to a temporary file, the dataset is built in a temporary
directory inside `data_dir` and renamed into place only when complete; on any failure both are removed.

Environment variables:
  JAXFORMER_MIRROR=http://host/dir   fetch `<mirror>/<file name>` (tiny_shakespeare: `input.txt`) instead of the
                                     canonical URL; also `file:///dir` or a plain local directory (air-gapped sites).
  JAXFORMER_NO_DOWNLOAD=1            never download: a dataset that is not prepared raises DatasetNotPreparedError.

Only the standard library is imported here; urllib, tqdm and tensorflow_datasets are imported on first use.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable

MIRROR_ENV = "JAXFORMER_MIRROR"
NO_DOWNLOAD_ENV = "JAXFORMER_NO_DOWNLOAD"
TIMEOUT_S = 20.0  # socket timeout: connecting and each read; an unreachable host fails in seconds
_CHUNK = 1 << 16


class DownloadError(OSError):
    """A dataset could not be fetched: network or HTTP error, connection dropped, data directory not writable."""


class ChecksumError(DownloadError):
    """A downloaded file's sha256 is not the one expected; the file was discarded."""


@dataclasses.dataclass(frozen=True)
class RemoteDataset:
    """A TFDS dataset jaxformer can prepare from one raw text file.

    Attributes:
      name: the TFDS name (its builder gives features, description, citation).
      version: the TFDS version written (`<data_dir>/<name>/<version>/`).
      url: the canonical source, the URL the tfds builder downloads.
      sha256: the file's sha256, as registered in the tfds builder's checksums.tsv.
      num_bytes: the file's size.
      split_examples: raw text -> {split name: [(key, example dict), ...]}, as the tfds builder generates them.
    """

    name: str
    version: str
    url: str
    sha256: str
    num_bytes: int
    split_examples: Callable[[str], dict[str, list[tuple[str, dict]]]]

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _tiny_shakespeare_examples(text: str) -> dict[str, list[tuple[str, dict]]]:
    # tfds's tiny_shakespeare builder: a 90/5/5 split of the characters, one example per split keyed by its name.
    i = int(len(text) * 0.9)
    train, rest = text[:i], text[i:]
    j = int(len(rest) * 0.5)
    splits = {"train": train, "validation": rest[:j], "test": rest[j:]}
    return {name: [(name, {"text": split_text})] for name, split_text in splits.items()}


DATASETS: dict[str, RemoteDataset] = {
    "tiny_shakespeare": RemoteDataset(
        name="tiny_shakespeare",
        version="1.0.0",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        num_bytes=1_115_394,
        split_examples=_tiny_shakespeare_examples,
    ),
}


def registered(name: str) -> RemoteDataset | None:
    """The `DATASETS` entry for a TFDS name ("tiny_shakespeare", "tiny_shakespeare:1.0.0"), or None."""
    base, _, version = name.partition(":")
    dataset = DATASETS.get(base)
    if dataset is None or (version and version != dataset.version):
        return None
    return dataset


def downloads_disabled() -> bool:
    """Whether `$JAXFORMER_NO_DOWNLOAD` turns downloading off (any value but "", "0", "false", "no")."""
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def mirror_url(url: str, mirror: str) -> str:
    """`url` served by `mirror`: mirror + "/" + the URL's file name. A local directory becomes a file:// URL."""
    if "://" not in mirror:
        from pathlib import Path

        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


def source_url(dataset: RemoteDataset, mirror: str | None = None) -> str:
    """Where `dataset`'s raw file is fetched from: `mirror` (default `$JAXFORMER_MIRROR`) if set, else its URL."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "").strip()
    return mirror_url(dataset.url, mirror) if mirror else dataset.url


def mirror_help(dataset: RemoteDataset, url: str | None = None) -> str:
    """How to point jaxformer at a mirror of `dataset` (`url`: where it was just fetched from), for error messages."""
    serves = f"{dataset.file_name} (sha256 {dataset.sha256})"
    if url and url != dataset.url:
        return (
            f"{MIRROR_ENV} is set, so {url} was tried instead of {dataset.url}: check that the mirror serves "
            f"{serves}, or unset {MIRROR_ENV}."
        )
    return (
        f"Where {dataset.url} cannot be reached, set {MIRROR_ENV}=http://host/dir to a server that serves "
        f"{serves}, or {MIRROR_ENV}=/local/dir to a directory holding it."
    )


def fetch(url: str, dest: str | os.PathLike, *, sha256: str, num_bytes: int | None = None, timeout: float = TIMEOUT_S):
    """Downloads `url` to the file `dest` with a tqdm progress bar (bytes), checking its sha256.

    Raises:
      DownloadError: the download failed (unreachable host, timeout, HTTP error, connection dropped).
      ChecksumError: the file's sha256 is not `sha256`; the message names the URL and both checksums.
    On any error `dest` is removed.
    """
    import hashlib
    import http.client
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    digest, received, announced = hashlib.sha256(), 0, None
    request = urllib.request.Request(url, headers={"User-Agent": "jaxformer"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as f:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            with tqdm(
                total=announced or num_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1],
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if announced is not None and received < announced:  # http.client's read() just stops at an early EOF
                raise http.client.IncompleteRead(b"", announced - received)
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts and resets are OSErrors
        _remove(dest)
        if isinstance(err, http.client.IncompleteRead):
            what = f"the connection closed after {received} of {announced} bytes"
        else:
            reason = err.reason if type(err) is urllib.error.URLError else err  # "[Errno 111] Connection refused"
            what = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        raise DownloadError(f"Downloading {url} failed: {what}") from err
    except BaseException:
        _remove(dest)
        raise
    got = digest.hexdigest()
    if got != sha256:
        _remove(dest)
        raise ChecksumError(
            f"The file downloaded from {url} has the wrong sha256: expected {sha256}"
            f"{f' ({num_bytes} bytes)' if num_bytes else ''}, got {got} ({received} bytes). It was discarded; "
            f"if this URL is a mirror, it serves a different or damaged file."
        )


def prepare(name: str, data_dir: str | os.PathLike, *, mirror: str | None = None, timeout: float = TIMEOUT_S) -> str:
    """Makes `<data_dir>/<name>/<version>/` a prepared TFDS dataset (array_record) unless it already is one.

    Args:
      name: a name in `DATASETS` ("tiny_shakespeare", optionally ":1.0.0").
      data_dir: the TFDS data directory (created if missing).
      mirror: base URL (or local directory) serving the raw file; default `$JAXFORMER_MIRROR`.
      timeout: socket timeout in seconds.

    Returns:
      the prepared dataset's directory.

    Raises:
      KeyError: jaxformer does not know how to fetch `name`.
      DownloadError / ChecksumError: as for `fetch`; nothing is left in `data_dir`.
    """
    dataset = registered(name)
    if dataset is None:
        raise KeyError(f"jaxformer cannot fetch the dataset {name!r}; it fetches only {sorted(DATASETS)}.")
    data_dir = os.fspath(os.path.expanduser(data_dir))
    final = os.path.join(data_dir, dataset.name, dataset.version)
    if _is_prepared(final):
        return final
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "").strip()
    if not mirror and _tensorflow_available():
        try:
            _prepare_with_tfds(dataset, data_dir)
            if _is_prepared(final):
                return final
        except Exception as err:  # e.g. a TensorFlow tfds cannot use: fall back to the download below
            warnings.warn(
                f"tfds could not prepare {dataset.name!r} ({err!r}); downloading it without TensorFlow instead.",
                stacklevel=2,
            )
    _prepare_from_file(dataset, data_dir, source_url(dataset, mirror), timeout)
    return final


def _is_prepared(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_info.json"))


def _tensorflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _prepare_with_tfds(dataset: RemoteDataset, data_dir: str) -> None:
    """tfds's own way, which needs TensorFlow: the builder downloads (checking its checksums) and prepares."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(f"{dataset.name}:{dataset.version}", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()


def _prepare_from_file(dataset: RemoteDataset, data_dir: str, url: str, timeout: float) -> None:
    """Downloads the raw file and writes the prepared dataset, atomically (see the module docstring)."""
    created = not os.path.isdir(data_dir)
    try:
        os.makedirs(data_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{dataset.name}-{dataset.version}.incomplete-", dir=data_dir)
    except OSError as err:
        raise DownloadError(f"Cannot write in the data directory {data_dir}: {err}") from err
    final = os.path.join(data_dir, dataset.name, dataset.version)
    try:
        print(f"jaxformer: {dataset.name} is not prepared in {data_dir}; downloading {url}", file=sys.stderr)
        raw = os.path.join(tmp, dataset.file_name)
        fetch(url, raw, sha256=dataset.sha256, num_bytes=dataset.num_bytes, timeout=timeout)
        with open(raw, "rb") as f:
            text = f.read().decode("utf-8")  # as tfds reads it: no newline translation
        built = _write_tfds_dataset(dataset, dataset.split_examples(text), os.path.join(tmp, "data"))
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.rename(built, final)
        except OSError:
            if not _is_prepared(final):  # else another process prepared it meanwhile: keep theirs
                raise
        print(f"jaxformer: prepared {dataset.name} in {final}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_prepared(final):  # leave no empty directory behind either
            for directory in (os.path.dirname(final), *([data_dir] if created else [])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass


def _write_tfds_dataset(dataset: RemoteDataset, examples: dict[str, list[tuple[str, dict]]], root: str) -> str:
    """Writes `examples` as tfds's builder does, without TensorFlow: `<root>/<name>/<version>/`, which it returns.

    The builder gives the DatasetInfo (features, description, citation, ...); tfds's SplitBuilder encodes,
    serializes (tf.Example protos, no TF needed) and writes each split's array_record shards, as in
    `GeneratorBasedBuilder._generate_splits`; `DatasetInfo.write_to_directory` writes dataset_info.json and
    features.json, as at the end of `download_and_prepare`.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import split_builder as split_builder_lib
    from tensorflow_datasets.core import writer as writer_lib
    from tensorflow_datasets.core.utils import tqdm_utils

    builder = tfds.builder(f"{dataset.name}:{dataset.version}", data_dir=root, file_format="array_record")
    info = builder.info
    path = os.fspath(builder.data_path)
    os.makedirs(path)
    split_builder = split_builder_lib.SplitBuilder(
        split_dict=info.splits,
        features=info.features,
        dataset_size=info.dataset_size,
        beam_options=None,
        beam_runner=None,
        max_examples_per_split=None,
        example_writer=writer_lib.ExampleWriter(file_format=info.file_format),
    )
    split_infos = []
    bars_shown = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)  # tfds's per-split bars would flash by, one example each
    try:
        for split, split_examples in examples.items():
            template = naming.ShardedFileTemplate(
                split=split,
                dataset_name=builder.name,
                data_dir=builder.data_path,
                filetype_suffix=info.file_format.file_suffix,
            )
            future = split_builder.submit_split_generation(
                split_name=split,
                generator=iter(split_examples),
                filename_template=template,
                disable_shuffling=info.disable_shuffling,
                nondeterministic_order=False,
            )
            split_infos.append(future.result())
    finally:
        tqdm_utils.display_progress_bar(bars_shown)
    info.set_splits(tfds.core.SplitDict(split_infos))
    info.write_to_directory(path)
    return path


def _remove(path: str | os.PathLike) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
