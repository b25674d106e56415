"""Tests for jaxformer.data.images: scikit-learn's digits split, mnist reading, the fallback, batching."""

import re
import sys
import warnings

import numpy as np
import pytest

from jaxformer import data
from jaxformer.data import images as images_module
from jaxformer.data import sources

pytest.importorskip("sklearn", reason="the 'digits' dataset needs scikit-learn (pip install 'jaxformer[experiments]')")

NUM_DIGITS = 1797


@pytest.fixture(scope="module")
def digits_splits():
    return data.digits("train"), data.digits("test")


def _row_keys(ds):
    """One hashable key per example: the image's bytes and its label."""
    return [img.tobytes() + bytes([label]) for img, label in zip(ds.images, ds.labels, strict=True)]


def test_digits_shapes_dtypes_ranges(digits_splits):
    train, test = digits_splits
    for ds in (train, test):
        assert isinstance(ds, data.ImageDataset)
        assert ds.name == "digits" and ds.num_classes == 10
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
        assert ds.images.shape == (len(ds), 8, 8, 1) and ds.labels.shape == (len(ds),)
        assert ds.image_shape == (8, 8, 1)
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
        assert ds.images.max() == 1.0  # 16 / 16
        assert set(np.unique(ds.labels)) == set(range(10))  # every class in both splits
    assert (len(train), len(test)) == (1438, 359)


def test_digits_pixel_scaling_matches_sklearn(digits_splits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    train, test = digits_splits
    all_pixels = np.sort(np.concatenate([train.images, test.images]).ravel())
    np.testing.assert_allclose(all_pixels, np.sort(raw.images.ravel() / 16.0), rtol=0, atol=1e-7)


def test_digits_split_is_disjoint_and_complete(digits_splits):
    train, test = digits_splits
    assert len(train) + len(test) == NUM_DIGITS
    train_keys, test_keys = _row_keys(train), _row_keys(test)
    from sklearn.datasets import load_digits

    raw = load_digits()
    raw_keys = [
        (img[..., None] / np.float32(16.0)).astype(np.float32).tobytes() + bytes([label])
        for img, label in zip(raw.images.astype(np.float32), raw.target, strict=True)
    ]
    assert len(set(raw_keys)) == NUM_DIGITS  # the 1,797 images are all distinct, so rows identify examples
    assert not set(train_keys) & set(test_keys)  # disjoint
    assert sorted(train_keys + test_keys) == sorted(raw_keys)  # together, exactly the whole dataset


def test_digits_split_is_stratified(digits_splits):
    train, test = digits_splits
    per_class = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    test_share = np.bincount(test.labels, minlength=10) / per_class
    assert np.all(np.abs(test_share - 0.2) < 0.01)


def test_digits_split_is_deterministic(digits_splits):
    train, test = digits_splits
    again = data.digits("test", seed=0)
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)
    other = data.digits("test", seed=1)
    assert len(other) == len(test)
    assert not np.array_equal(other.images, test.images)
    half = data.digits("test", test_fraction=0.5, seed=3)
    assert len(half) + len(data.digits("train", test_fraction=0.5, seed=3)) == NUM_DIGITS
    assert 880 <= len(half) <= 920


def test_digits_errors():
    with pytest.raises(
        ValueError,
        match=r"`split` for the 'digits' dataset must be one of \['train', 'test'\]; "
        r"got 'validation'",
    ):
        data.digits("validation")
    with pytest.raises(ValueError, match=r"got 'train\[:10%\]'"):
        data.digits("train[:10%]")
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"`test_fraction` must be a finite number in \(0, 1\); got "):
            data.digits("train", test_fraction=bad)
    for bad in ("0.2", True, None):
        with pytest.raises(TypeError, match=r"`test_fraction` must be a real number; got "):
            data.digits("train", test_fraction=bad)
    with pytest.raises(TypeError, match=r"`split` for the 'digits' dataset must be one of \['train', 'test'\]; got 0"):
        data.digits(0)
    with pytest.raises(ValueError, match=r"`seed` must be a non-negative int; got -1"):
        data.digits("train", seed=-1)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `from sklearn.datasets import ...` fail
    with pytest.raises(ImportError, match=re.escape("pip install 'jaxformer[experiments]'")):
        data.digits("train")


def test_fallback_to_digits_when_mnist_not_prepared(tmp_path):
    with pytest.warns(UserWarning, match=r"'mnist' is not available, so 'digits'.*is loaded instead") as record:
        ds = data.image_dataset("mnist", "train", data_dir=tmp_path, fallback="digits")
    message = str(record[0].message)
    assert "not prepared" in message and str(tmp_path) in message
    assert ds.name == "digits" and ds.images.shape == (1438, 8, 8, 1)
    with pytest.warns(UserWarning, match="is loaded instead"):
        test = data.image_dataset("mnist", "test", data_dir=tmp_path, fallback="digits")
    assert test.name == "digits" and test.labels.shape == (359,)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_no_fallback_raises_not_prepared(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match=r"'mnist' is not prepared"):
        data.image_dataset("mnist", "train", data_dir=tmp_path)
    with pytest.raises(data.DatasetNotPreparedError):
        data.mnist("test", data_dir=tmp_path)


def test_digits_by_name_needs_no_fallback(digits_splits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.image_dataset("digits", "test", fallback="mnist")
    np.testing.assert_array_equal(ds.labels, digits_splits[1].labels)


def test_image_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"^name='cifar10'; choose one of \('digits', 'mnist'\)\.$"):
        data.image_dataset("cifar10", "train")
    with pytest.raises(TypeError, match=r"^name=None; choose one of \('digits', 'mnist'\)\.$"):
        data.image_dataset(None, "train")
    with pytest.raises(ValueError, match=r"^fallback='digit'; choose one of \('digits', 'mnist'\)\.$"):
        data.image_dataset("mnist", "train", data_dir=tmp_path, fallback="digit")
    with pytest.raises(ValueError, match=r"must be one of \['train', 'test'\]; got 'bogus'"):
        data.image_dataset("digits", "bogus")


class _FakeMnistSource:
    """What `tfds_source("mnist", ...)` returns: len() records, each {"image": uint8 [28, 28, 1], "label": int64}."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
        self.images[0, 0, 0, 0], self.images[0, 0, 1, 0] = 0, 255
        self.labels = rng.integers(0, 10, size=n).astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


def test_mnist_reads_records(monkeypatch):
    fake = _FakeMnistSource(7)
    calls = []

    def fake_tfds_source(name, split, *, data_dir=None):
        calls.append((name, split, data_dir))
        return fake

    monkeypatch.setattr(sources, "tfds_source", fake_tfds_source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # prepared: no fallback, no warning
        ds = data.image_dataset("mnist", "train[:7]", data_dir="/some/dir", fallback="digits")
    assert calls == [("mnist", "train[:7]", "/some/dir")]
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.images.shape == (7, 28, 28, 1) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int32
    np.testing.assert_allclose(ds.images, fake.images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, fake.labels)
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0


def test_image_dataset_validates_shapes():
    with pytest.raises(ValueError, match=r"`images` must be a \[N, H, W, C\] array; got shape \(4, 8, 8\)"):
        data.ImageDataset(np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int32), num_classes=10, name="x")
    with pytest.raises(ValueError, match=r"`labels` must be a \[N\] array .*N=4.*got shape \(3,\)"):
        data.ImageDataset(np.zeros((4, 8, 8, 1), np.float32), np.zeros(3, np.int32), num_classes=10, name="x")


def test_shuffled_batches_over_image_dataset(digits_splits):
    train = digits_splits[0]
    batches = data.pipeline.shuffled_examples(train.as_dict(), batch_size=32, seed=0)
    for step in range(3):
        batch = batches[step]
        assert set(batch) == {"images", "labels"}
        assert batch["images"].shape == (32, 8, 8, 1) and batch["images"].dtype == np.float32
        assert batch["labels"].shape == (32,) and batch["labels"].dtype == np.int32
    # Each example keeps its own label: every row of the batch is a row of the dataset, image and label together.
    flat = train.images.reshape(len(train), -1)
    for image, label in zip(batch["images"], batch["labels"], strict=True):
        matches = np.flatnonzero((flat == image.reshape(-1)).all(axis=1))
        assert matches.size and label in train.labels[matches]


def test_module_exports():
    assert data.image_dataset is images_module.image_dataset
    for name in ("ImageDataset", "image_dataset", "digits", "mnist"):
        assert name in data.__all__
