"""Where the images come from: scikit-learn's bundled digits, and CIFAR-10's readers (``cifar10.py``),
by name (``load_dataset``); every data set is checked (``datasets.check_dataset``) before use."""

from __future__ import annotations

import numpy as np

from prunelora_keras.data.cifar10 import load_cifar10
from prunelora_keras.data.datasets import Dataset, check_dataset
from prunelora_keras.errors import UserError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split never changes with the run's seed


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits as 8x8 RGB uint8 images, with a fixed stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    mean = float(x_train.mean() / 255.0)
    std = float(x_train.std() / 255.0)
    return Dataset("digits", x_train, y_train, x_test, y_test, tuple(str(i) for i in range(10)),
                   (mean,) * 3, (std,) * 3)


DATASETS = ("cifar10", "digits", "tfds:cifar10")


def load_dataset(name: str, data_dir: str = "") -> Dataset:
    """Load a data set by name (see ``DATASETS``), checked by ``check_dataset``."""
    if name == "digits":
        ds = load_digits()
    elif name in ("cifar10", "tfds:cifar10"):
        ds = load_cifar10(data_dir, name)
    else:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    check_dataset(ds)
    return ds
