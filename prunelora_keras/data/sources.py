"""Where the images come from: scikit-learn's bundled digits, CIFAR-10's readers (``cifar10.py``) and
the other data sets' (``readers.py``: CIFAR-100, SVHN, TinyImageNet, any image folder, any
tensorflow-datasets name), by name (``load_dataset``); every data set is checked
(``datasets.check_dataset``) before use."""

from __future__ import annotations

import numpy as np

from pathlib import Path

from prunelora_keras.data.cifar10 import load_cifar10, read_cifar10_dir
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


DATASETS = ("cifar10", "cifar100", "svhn", "tinyimagenet", "digits", "tfds:cifar10", "folder:PATH", "tfds:NAME")


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units (the normalisation of a
    data set without published statistics), computed in chunks so a large set needs no float copy."""
    total, square, n = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(x), 4096):
        chunk = np.asarray(x[start:start + 4096], np.float64).reshape(-1, 3) / 255.0
        total, square, n = total + chunk.sum(0), square + (chunk ** 2).sum(0), n + len(chunk)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(square / max(n, 1) - mean ** 2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _needs_dir(name: str, data_dir: str, where: str) -> Path:
    if not data_dir:
        raise UserError(f"--dataset {name} reads its official files: pass --data-dir PATH ({where})")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise UserError(f"--data-dir {path} does not exist: point it at {name} ({where})")
    return path


def load_dataset(name: str, data_dir: str = "", *, labels: str = "fine", image_size: int = 0) -> Dataset:
    """Load a data set by name (see ``DATASETS``), checked by ``check_dataset``.

    ``labels``: CIFAR-100's "fine" (100 classes) or "coarse" (20 super-classes); ``image_size``: the
    side images of ``folder:PATH`` are resized to (0: as they are).
    """
    from prunelora_keras.data import readers

    if name == "digits":
        ds = load_digits()
    elif name in ("cifar10", "tfds:cifar10"):
        ds = load_cifar10(data_dir, name)
    elif name == "cifar100":
        path = _needs_dir(name, data_dir, f"the python release {readers.CIFAR100_URL}, its folder or an image-folder tree")
        if path.is_file() or not (path / "train").is_dir():
            arrays = readers.read_cifar100(path, labels)
        elif labels != "fine":  # a tree's folders are its classes: it has no second, coarse labelling
            raise UserError(f"--data-dir {path} is an image-folder tree, which holds one label per image (its folder): "
                            f"data.labels={labels} needs CIFAR-100's python release ({readers.CIFAR100_URL})")
        else:
            arrays = read_cifar10_dir(path)
        ds = Dataset(f"cifar100-{labels}" if labels != "fine" else "cifar100", *arrays, readers.CIFAR100_MEAN,
                     readers.CIFAR100_STD)
    elif name in ("svhn", "tinyimagenet") or name.startswith(("folder:", "tfds:")):
        if name == "svhn":
            arrays = readers.read_svhn(_needs_dir(name, data_dir, readers.SVHN_URL))
        elif name == "tinyimagenet":
            path = _needs_dir(name, data_dir, readers.TINYIMAGENET_URL)
            arrays = readers.read_tinyimagenet(path)  # file-backed: memory-mapped, read lazily
        elif name.startswith("folder:"):
            arrays = readers.read_folder(Path(name[len("folder:"):]).expanduser(), image_size)
        else:
            arrays = readers.read_tfds(name[len("tfds:"):])
        ds = Dataset(name.split(":")[0] if name.startswith("folder:") else name, *arrays, *channel_stats(arrays[0]))
    else:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    check_dataset(ds)
    return ds
