"""Image-classification datasets as in-memory arrays: TFDS mnist when it is prepared, else scikit-learn's digits.

    ds = image_dataset("mnist", "train", fallback="digits")   # mnist if prepared in $TFDS_DATA_DIR, else digits
    ds.images, ds.labels                                       # float32 [N, H, W, C] in [0, 1], int32 [N]
    batches = pipeline.shuffled_examples(ds.as_dict(), batch_size=128, seed=0)   # grain MapDataset of batches

Two datasets, both 10 classes of handwritten digits, grayscale (C = 1):

  - "mnist": TFDS mnist, 28x28x1; train 60,000 and test 10,000 images. Read through `tfds_source`, so it is never
    downloaded here: it must be prepared (array_record) in the TFDS data directory.
  - "digits": the 1,797 8x8x1 images that scikit-learn ships (`sklearn.datasets.load_digits`), so it works
    offline; split into train (1,438) and test (359) by a deterministic stratified permutation. Needs the
    optional extra `pip install 'jaxformer[experiments]'`.

Both use the split names "train" and "test" (neither has a "validation" split), so a config's splits work with
either dataset; mnist also takes TFDS split expressions ("train[:90%]"), digits does not.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from jaxformer import checks
from jaxformer.data import sources

DIGITS_SPLITS = ("train", "test")
IMAGE_DATASETS = ("digits", "mnist")
_NUM_CLASSES = 10  # both datasets: the digits 0-9


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A split of an image-classification dataset, held in memory.

    Attributes:
      images: float32 `[N, H, W, C]`, pixel values scaled to [0, 1].
      labels: int32 `[N]`, class ids in [0, num_classes).
      num_classes: number of classes K.
      name: the dataset actually loaded ("mnist" or "digits"): after a fallback, not the one asked for.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        object.__setattr__(self, "images", images)  # frozen: set once, here
        object.__setattr__(self, "labels", labels)
        if images.ndim != 4:
            raise ValueError(f"`images` must be a [N, H, W, C] array; got shape {images.shape}.")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"`labels` must be a [N] array with one label per image (N={images.shape[0]}); got shape "
                f"{labels.shape}."
            )
        checks.check_positive_int("num_classes", self.num_classes)

    def __len__(self) -> int:
        """N, the number of examples."""
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])

    def as_dict(self) -> dict[str, np.ndarray]:
        """`{"images": [N, H, W, C], "labels": [N]}`: the `arrays` of `data.pipeline.shuffled_examples`."""
        return {"images": self.images, "labels": self.labels}


def digits(split: str, *, test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; no download), split into train and test.

    The split is stratified: of each class's images a random `round(test_fraction * count)` (at least one, and
    at least one left for train) go to "test", the rest to "train", drawn from `seed` alone; so the same
    (test_fraction, seed) always gives the same split, and the "train" and "test" of one (test_fraction, seed)
    are disjoint and together hold all 1,797 images. With the defaults: train 1,438, test 359. Within a split
    the images keep scikit-learn's order.

    Args:
      split: "train" or "test".
      test_fraction: the fraction of each class held out for "test", strictly between 0 and 1.
      seed: non-negative int; picks which images are held out.

    Returns:
      an ImageDataset named "digits": images float32 `[N, 8, 8, 1]` (scikit-learn's 0..16 pixel values / 16),
      labels int32 `[N]`, num_classes 10.

    Raises:
      ImportError: scikit-learn is not installed.
      ValueError: a bad `split`, `test_fraction` or `seed`.
      TypeError: a `split` that is no string, a `test_fraction` or `seed` that is no number.
    """
    if not isinstance(split, str) or split not in DIGITS_SPLITS:
        raise (ValueError if isinstance(split, str) else TypeError)(
            f"`split` for the 'digits' dataset must be one of {list(DIGITS_SPLITS)}; got {split!r}. (It has no "
            f"validation split and takes no TFDS split expressions; the split sizes are set by test_fraction.)"
        )
    test_fraction = checks.check_real("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    seed = checks.check_nonnegative_int("seed", seed)
    try:
        from sklearn.datasets import load_digits  # lazy: importing scikit-learn costs ~2 s
    except ImportError as err:
        raise ImportError(
            "The 'digits' dataset needs scikit-learn, which is not installed; install the optional extra with "
            "`pip install 'jaxformer[experiments]'` (or `pip install scikit-learn`)."
        ) from err

    bunch = load_digits()
    images = np.asarray(bunch.images, np.float32)[..., None] / np.float32(16.0)  # [1797, 8, 8, 1] in [0, 1]
    labels = np.asarray(bunch.target).astype(np.int32)

    rng = np.random.default_rng(seed)
    is_test = np.zeros(labels.shape[0], bool)
    for c in range(_NUM_CLASSES):  # classes in a fixed order, so the draws depend on the seed alone
        members = np.flatnonzero(labels == c)
        n_test = min(max(round(float(test_fraction) * members.size), 1), members.size - 1)
        is_test[rng.permutation(members)[:n_test]] = True
    keep = is_test if split == "test" else ~is_test
    return ImageDataset(images=images[keep], labels=labels[keep], num_classes=_NUM_CLASSES, name="digits")


def mnist(split: str, *, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """TFDS mnist (28x28 grayscale handwritten digits; train 60,000, test 10,000), read into memory.

    Never downloads: the dataset must be prepared (array_record) in `data_dir`; see `tfds_source`.

    Args:
      split: "train", "test", or a TFDS split expression ("train[:90%]", "train[90%:]").
      data_dir: directory holding `mnist/<version>/`; defaults to `default_data_dir()` ($TFDS_DATA_DIR).

    Returns:
      an ImageDataset named "mnist": images float32 `[N, 28, 28, 1]` (uint8 pixels / 255), labels int32 `[N]`,
      num_classes 10.

    Raises:
      DatasetNotPreparedError (a FileNotFoundError): mnist is not prepared in `data_dir`.
      ValueError: `split` names no split of mnist.
    """
    source = sources.tfds_source("mnist", split, data_dir=data_dir)
    n = len(source)
    if n == 0:
        raise ValueError(f"TFDS mnist split {split!r} has no examples; choose a non-empty split.")
    first = source[0]
    missing = [k for k in ("image", "label") if k not in first]
    if missing:
        raise ValueError(
            f"Records of TFDS mnist lack the features {missing}; expected 'image' and 'label', got {sorted(first)}."
        )
    pixels = np.empty((n, *np.shape(first["image"])), np.uint8)
    labels = np.empty(n, np.int32)
    for i in range(n):
        record = first if i == 0 else source[i]
        pixels[i] = record["image"]
        labels[i] = record["label"]
    images = pixels.astype(np.float32) / np.float32(255.0)
    if images.ndim == 3:  # [N, H, W]: add the channel axis
        images = images[..., None]
    return ImageDataset(images=images, labels=labels, num_classes=_NUM_CLASSES, name="mnist")


def image_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    fallback: str | None = None,
) -> ImageDataset:
    """A split of the image dataset `name`, or of `fallback` when `name` is a TFDS dataset that is not prepared.

        image_dataset("mnist", "train", fallback="digits")   # mnist if prepared, else digits with a warning

    Args:
      name: "mnist" (TFDS; see `mnist`) or "digits" (scikit-learn; see `digits`, with its default
        test_fraction=0.2 and seed=0, so the split is always the same).
      split: "train" or "test" (mnist also takes TFDS split expressions; the fallback gets the same split).
      data_dir: the TFDS data directory for mnist; defaults to `default_data_dir()` ($TFDS_DATA_DIR). Ignored
        by digits.
      fallback: a dataset name to load instead, with a `UserWarning` that says why, when `name` is not
        prepared (DatasetNotPreparedError). None (default): that error is raised.

    Returns:
      an ImageDataset; its `name` says which dataset was loaded.

    Raises:
      ValueError: `name` or `fallback` is not one of the datasets; a bad `split`.
      TypeError: `name` or `fallback` is no string.
      DatasetNotPreparedError: `name` is not prepared and no `fallback` is given.
    """
    checks.check_choice("name", name, IMAGE_DATASETS)
    if fallback is not None:
        checks.check_choice("fallback", fallback, IMAGE_DATASETS)
    try:
        return _load(name, split, data_dir)
    except sources.DatasetNotPreparedError as err:
        if fallback is None:
            raise
        warnings.warn(
            f"Image dataset {name!r} is not available, so {fallback!r} ({_DESCRIPTIONS[fallback]}) is loaded "
            f"instead; results are not comparable with {name!r}. Why: {err}",
            UserWarning,
            stacklevel=2,
        )
        return _load(fallback, split, data_dir)


_DESCRIPTIONS = {
    "digits": "scikit-learn's 1,797 8x8x1 digits",
    "mnist": "TFDS mnist, 70,000 28x28x1 digits",
}


def _load(name: str, split: str, data_dir) -> ImageDataset:
    if name == "mnist":
        return mnist(split, data_dir=data_dir)
    return digits(split)
