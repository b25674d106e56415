"""Tests for jaxformer.data.download: tiny_shakespeare fetched from a loopback mirror and prepared as tfds does.

The mirror is an http.server on 127.0.0.1 serving a copy of the raw text as `input.txt`, a corrupted copy (one
byte changed) as `bad/input.txt`, and `drop/input.txt`, which announces the whole file and hangs up halfway.
"""

from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import http.server
import os
import pathlib
import shutil
import socket
import threading
import time

import pytest

from jaxformer import data
from jaxformer.data import download

RAW = pathlib.Path("/work/shared/data/tinyshakespeare.txt")
SHARED_TFDS = pathlib.Path("/work/shared/tensorflow_datasets")
REFERENCE = SHARED_TFDS / "tiny_shakespeare" / "1.0.0"
SPLITS = ("train", "validation", "test")

pytestmark = pytest.mark.skipif(not RAW.is_file(), reason=f"{RAW} (the raw tiny_shakespeare text) is absent")


class Mirror:
    """A loopback HTTP server; `requests` records every (method, path) it got."""

    def __init__(self, root: pathlib.Path):
        self.root, self.requests = root, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append((self.command, self.path))
                file = server.root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.startswith("/drop/"):
                    self.wfile.write(body[: len(body) // 2])  # then the connection closes
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    raw = RAW.read_bytes()
    (root / "input.txt").write_bytes(raw)
    for sub in ("bad", "drop"):
        (root / sub).mkdir()
    corrupted = bytearray(raw)
    corrupted[len(raw) // 2] ^= 0x01
    (root / "bad" / "input.txt").write_bytes(bytes(corrupted))
    (root / "drop" / "input.txt").write_bytes(raw)
    with Mirror(root) as server:
        yield server


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    import tensorflow_datasets  # noqa: F401  (tfds reads its env at import: import it before monkeypatching)

    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.delenv(download.NO_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(download, "_tensorflow_available", lambda: False)  # the TF-free path, wherever this runs


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_registry_and_raw_checksum():
    ds = download.registered("tiny_shakespeare")
    assert ds is download.registered("tiny_shakespeare:1.0.0")
    assert download.registered("tiny_shakespeare:9.9.9") is None and download.registered("mnist") is None
    assert ds.file_name == "input.txt" and ds.url.startswith("https://raw.githubusercontent.com/karpathy/")
    raw = RAW.read_bytes()
    assert (hashlib.sha256(raw).hexdigest(), len(raw)) == (ds.sha256, ds.num_bytes)
    assert download.mirror_url(ds.url, "http://host/dir/") == "http://host/dir/input.txt"
    # The URL and checksum are those tfds's own tiny_shakespeare builder registers.
    from tensorflow_datasets.core.download import checksums
    from tensorflow_datasets.datasets import tiny_shakespeare

    url_infos = checksums.load_url_infos(pathlib.Path(tiny_shakespeare.__file__).parent / "checksums.tsv")
    assert (url_infos[ds.url].checksum, url_infos[ds.url].size, url_infos[ds.url].filename) == (
        ds.sha256,
        ds.num_bytes,
        ds.file_name,
    )


def test_mirror_prepares_the_tfds_form_once(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    texts = {split: data.tfds_text("tiny_shakespeare", split, data_dir=tmp_path) for split in SPLITS}
    assert mirror.requests == [("GET", "/input.txt")]
    assert sorted(os.listdir(tmp_path)) == ["tiny_shakespeare"]  # no temp files left
    prepared = tmp_path / "tiny_shakespeare" / "1.0.0"
    assert {len(t) for t in texts.values()} == {1_003_854, 55_770}
    assert "".join(texts[s] for s in SPLITS) == RAW.read_text(encoding="utf-8")
    if not REFERENCE.is_dir():
        pytest.skip(f"the reference prepared copy {REFERENCE} is absent")
    for split in SPLITS:
        assert texts[split] == data.tfds_text("tiny_shakespeare", split, data_dir=SHARED_TFDS)
    names = sorted(os.listdir(REFERENCE))
    assert sorted(os.listdir(prepared)) == names
    _, mismatch, errors = filecmp.cmpfiles(REFERENCE, prepared, names, shallow=False)
    assert (mismatch, errors) == ([], [])  # byte-identical to what tfds's builder writes
    assert data.tfds_source("tiny_shakespeare", "test", data_dir=tmp_path)[0]["text"].decode() == texts["test"]
    assert mirror.requests == [("GET", "/input.txt")]  # prepared once, never downloaded again


def test_local_directory_mirror(tmp_path, monkeypatch):
    local = tmp_path / "air-gapped"
    local.mkdir()
    shutil.copy(RAW, local / "input.txt")
    monkeypatch.setenv(download.MIRROR_ENV, str(local))
    path = download.prepare("tiny_shakespeare", tmp_path / "tfds")
    assert path == str(tmp_path / "tfds" / "tiny_shakespeare" / "1.0.0")
    assert len(data.tfds_text("tiny_shakespeare", "validation", data_dir=tmp_path / "tfds")) == 55_770


def test_corrupted_mirror_raises_checksum_error_and_leaves_nothing(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, f"{mirror.url}/bad")
    ds = download.registered("tiny_shakespeare")
    with pytest.raises(download.ChecksumError) as info:
        data.tfds_text("tiny_shakespeare", "train", data_dir=tmp_path)
    message = str(info.value)
    got = hashlib.sha256((mirror.root / "bad" / "input.txt").read_bytes()).hexdigest()
    assert f"{mirror.url}/bad/input.txt" in message
    assert f"expected {ds.sha256}" in message and f"got {got}" in message
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_raises_and_leaves_nothing(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, f"{mirror.url}/drop")
    with pytest.raises(
        data.DatasetNotPreparedError, match=r"the connection closed after 557697 of 1115394 bytes"
    ) as info:
        data.tfds_source("tiny_shakespeare", "train", data_dir=tmp_path)
    assert isinstance(info.value.__cause__, download.DownloadError)
    assert list(tmp_path.iterdir()) == []
    # A data_dir that did not exist is not left behind either.
    with pytest.raises(download.DownloadError):
        download.prepare("tiny_shakespeare", tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mirror_says_how_to_set_one(tmp_path, monkeypatch):
    url = _closed_port_url()
    monkeypatch.setenv(download.MIRROR_ENV, url)
    start = time.monotonic()
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.tfds_text("tiny_shakespeare", "train", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "'tiny_shakespeare' is not prepared" in message and str(tmp_path) in message
    assert f"{url}/input.txt" in message and "Connection refused" in message  # the underlying error
    assert "JAXFORMER_MIRROR is set" in message and "check that the mirror serves input.txt" in message
    # Without a mirror, the message says how to set one (the canonical host cannot be reached either).
    monkeypatch.delenv(download.MIRROR_ENV)
    canonical = download.DATASETS["tiny_shakespeare"]
    monkeypatch.setitem(download.DATASETS, "tiny_shakespeare", dataclasses.replace(canonical, url=f"{url}/input.txt"))
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.tfds_text("tiny_shakespeare", "train", data_dir=tmp_path)
    message = str(info.value)
    assert "Connection refused" in message and "JAXFORMER_MIRROR=http://host/dir" in message
    assert "serves input.txt (sha256 86c4e6aa" in message
    assert "tfds build tiny_shakespeare" in message and "JAXFORMER_NO_DOWNLOAD=1" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["argument", "env"])
def test_opt_out_never_touches_the_network(mirror, tmp_path, monkeypatch, how):
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    monkeypatch.setattr(download, "prepare", lambda *a, **k: pytest.fail("prepare() called despite the opt-out"))
    kwargs = {"download": False} if how == "argument" else {}
    if how == "env":
        monkeypatch.setenv(download.NO_DOWNLOAD_ENV, "1")
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.tfds_text("tiny_shakespeare", "train", data_dir=tmp_path, **kwargs)
    message = str(info.value)
    assert "'tiny_shakespeare' is not prepared" in message and "Downloading is turned off" in message
    assert "tfds build tiny_shakespeare" in message
    assert mirror.requests == [] and list(tmp_path.iterdir()) == []


def test_tfds_builder_first_when_tensorflow_is_there(mirror, tmp_path, monkeypatch):
    """With TensorFlow and no mirror, tfds's own download_and_prepare goes first; if it fails, the TF-free path."""
    calls = []

    def failing_tfds(dataset, data_dir):
        calls.append(data_dir)
        raise RuntimeError("no usable TensorFlow")

    monkeypatch.setattr(download, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(download, "_prepare_with_tfds", failing_tfds)
    canonical = download.DATASETS["tiny_shakespeare"]
    monkeypatch.setitem(
        download.DATASETS,
        "tiny_shakespeare",
        dataclasses.replace(canonical, url=f"{mirror.url}/input.txt"),
    )
    with pytest.warns(UserWarning, match="no usable TensorFlow"):
        download.prepare("tiny_shakespeare", tmp_path / "a")
    assert calls == [str(tmp_path / "a")] and mirror.requests == [("GET", "/input.txt")]
    download.prepare("tiny_shakespeare", tmp_path / "b", mirror=mirror.url)  # a mirror: tfds is not asked
    assert len(calls) == 1 and len(mirror.requests) == 2
