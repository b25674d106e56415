"""Tests for jaxformer.data.sources: tiny_shakespeare from the shared TFDS directory, clear errors, text files."""

import pathlib
import re

import pytest

from jaxformer import data

SHARED_TFDS = pathlib.Path("/work/shared/tensorflow_datasets")
needs_tiny_shakespeare = pytest.mark.skipif(
    not (SHARED_TFDS / "tiny_shakespeare").exists(), reason=f"tiny_shakespeare is not prepared in {SHARED_TFDS}"
)


def _import_tfds_before_setting_env():
    """tfds reads TFDS_DATA_DIR once, at import: import it first so a monkeypatched value cannot leak to other tests."""
    import tensorflow_datasets  # noqa: F401


@needs_tiny_shakespeare
def test_tiny_shakespeare_splits():
    lengths = {
        split: len(data.tfds_text("tiny_shakespeare", split, data_dir=SHARED_TFDS))
        for split in ("train", "validation", "test")
    }
    assert lengths == {"train": 1_003_854, "validation": 55_770, "test": 55_770}


@needs_tiny_shakespeare
def test_tiny_shakespeare_text_and_source():
    text = data.tfds_text("tiny_shakespeare", "validation", data_dir=str(SHARED_TFDS))
    assert isinstance(text, str)
    source = data.tfds_source("tiny_shakespeare", "validation", data_dir=SHARED_TFDS)
    assert len(source) == 1
    assert source[0]["text"].decode("utf-8") == text
    assert data.tfds_text("tiny_shakespeare", "train", data_dir=SHARED_TFDS).startswith("First Citizen:\n")


@needs_tiny_shakespeare
def test_data_dir_defaults_to_env(monkeypatch):
    _import_tfds_before_setting_env()
    monkeypatch.setenv("TFDS_DATA_DIR", str(SHARED_TFDS))
    assert data.default_data_dir() == str(SHARED_TFDS)
    assert len(data.tfds_text("tiny_shakespeare", "test")) == 55_770


@needs_tiny_shakespeare
def test_unknown_split_and_feature():
    with pytest.raises(ValueError, match=r"no split 'bogus'; choose one of \['train', 'validation', 'test'\]"):
        data.tfds_source("tiny_shakespeare", "bogus", data_dir=SHARED_TFDS)
    with pytest.raises(ValueError, match=r"no feature 'body'; pass `feature` one of \['text'\]"):
        data.tfds_text("tiny_shakespeare", "test", data_dir=SHARED_TFDS, feature="body")


def test_name_and_split_must_be_non_empty_strings(tmp_path):
    with pytest.raises(ValueError, match=r"`name` must be a TFDS dataset name such as 'tiny_shakespeare'; got ''"):
        data.tfds_source("", "train", data_dir=tmp_path)
    with pytest.raises(TypeError, match=r"`name` must be a TFDS dataset name .*; got None"):
        data.tfds_source(None, "train", data_dir=tmp_path)
    with pytest.raises(TypeError, match=r"`split` must be a split name such as 'train'; got 0"):
        data.tfds_source("tiny_shakespeare", 0, data_dir=tmp_path)


def test_missing_dataset_error_says_where_and_how(tmp_path):
    # download=False: tiny_shakespeare would otherwise be fetched (tests/data/test_download.py).
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.tfds_text("tiny_shakespeare", "train", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "'tiny_shakespeare' is not prepared" in message
    assert str(tmp_path) in message
    assert "TFDS_DATA_DIR" in message and "data_dir=" in message
    assert "tfds build tiny_shakespeare" in message and "download_and_prepare()" in message
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_missing_dataset_from_env(tmp_path, monkeypatch):
    _import_tfds_before_setting_env()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JAXFORMER_NO_DOWNLOAD", "1")
    with pytest.raises(data.DatasetNotPreparedError, match=re.escape(str(tmp_path))):
        data.tfds_source("tiny_shakespeare", "train")


def test_unregistered_dataset_error(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match=r"'no_such_dataset_xyz' was not found.*check the spelling"):
        data.tfds_source("no_such_dataset_xyz", "train", data_dir=tmp_path)


def test_text_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("héllo\nworld\n", encoding="utf-8")
    assert data.text_file(path) == "héllo\nworld\n"
    assert data.text_file(str(path)) == "héllo\nworld\n"


def test_text_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt.*does not exist"):
        data.text_file(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        data.text_file(tmp_path)
