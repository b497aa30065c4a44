"""The data set type and the unlearning split: D_r, D_f and the test sets, class-wise or random.

Images are kept as uint8 NHWC arrays on the host; normalisation and augmentation happen on the
device inside the compiled step (``data/augment.py``), so the host never holds float copies.
Where the images come from is ``sources.py``; how they are batched is ``batches.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.batches import Rows
from prunelora_keras.errors import UserError



@dataclass
class Dataset:
    """A labelled image classification data set: uint8 NHWC images, int32 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocess(self) -> Preprocess:
        """The one value that turns these stored images into the models' inputs."""
        return Preprocess(self.mean, self.std)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


@dataclass
class Subset:
    x: np.ndarray  # or a lazy ``batches.Rows`` view of a memory-mapped data set (``image_cache``)
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class UnlearningSplit:
    """One forget request: D_r, D_f, and the test images of the remaining and the forgotten classes.

    Class-wise forgetting splits the test set by class; forgetting samples (``--forget-fraction``) forgets no
    class, so ``test_retain`` is the whole test set and ``test_forget`` is empty."""

    retain: Subset  # D_r: the training images kept
    forget: Subset  # D_f: the training images to forget (a class's, or a random sample's)
    test_retain: Subset  # test images of the remaining classes (TA): every test image when forgetting samples
    test_forget: Subset  # test images of the forgotten classes (not used by the paper's metrics); empty then
    train: Subset  # the (possibly subsampled) full training set, for pretraining
    test: Subset  # the (possibly subsampled) full test set
    forget_class: int
    forget_classes: tuple[int, ...] = ()  # every class forgotten (continual unlearning: more than one)


def check_dataset(ds: Dataset) -> None:
    """Refuse malformed data before anything trains, with one line that names the problem.

    Every source ends here (digits, the three folder layouts, Keras, tfds), so one check covers
    them all. Caught now, a wrong shape would surface as a shape error deep in a compiled step, a
    label out of range as a silently wrong loss, and an empty class as a forget set of nothing.
    """
    n = ds.num_classes
    if n < 2:
        raise UserError(f"{ds.name} has {n} class(es): class-wise unlearning needs at least two classes")
    for split, x, y in (("training", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape[1:3]:
            raise UserError(f"{ds.name} {split} images have shape {x.shape[1:]} and dtype {x.dtype}: "
                            "expected RGB images, H x W x 3 uint8, all of one shape")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{ds.name} {split} labels have shape {y.shape} and dtype {y.dtype} for {len(x)} "
                            "images: expected one integer label per image")
        bad = np.flatnonzero((y < 0) | (y >= n))
        if bad.size:
            raise UserError(f"{ds.name} {split} label {int(y[bad[0]])} (image {int(bad[0])}) is outside 0..{n - 1}: "
                            f"labels must index the {n} class names")
    if ds.x_test.shape[1:] != ds.x_train.shape[1:]:
        raise UserError(f"{ds.name}: training images are {ds.x_train.shape[1:]} but test images "
                        f"{ds.x_test.shape[1:]}: all images must have one shape")
    empty = np.flatnonzero(np.bincount(ds.y_train, minlength=n) == 0)
    if empty.size:
        c = int(empty[0])
        raise UserError(f"{ds.name} has no training images of class {c} ({ds.class_names[c]}): every class "
                        "needs training images; add them or remove the class")


def stratified_indices(labels: np.ndarray, size: int, seed: int, what: str = "size") -> np.ndarray:
    """A seeded, stratified sample of ``size`` indices (all indices, in order, when size is 0 or too big).

    A stratified draw needs one image of every class on both sides of the cut and two of each class
    in all; scikit-learn's own error for that is a traceback, so ``what`` (the setting) is named here.
    """
    if size <= 0 or size >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    classes = int(np.count_nonzero(counts))
    if size < classes or len(labels) - size < classes:
        raise UserError(f"{what} = {size} cannot be drawn stratified from {len(labels)} images of {classes} classes: "
                        f"use 0 (all images) or a value in {classes}..{len(labels) - classes}")
    if counts[counts > 0].min() < 2:
        raise UserError(f"{what} = {size}: class {int(np.flatnonzero(counts == 1)[0])} has a single image, too few "
                        f"to subsample stratified; set {what} = 0 to keep all images")
    idx, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(idx)


def random_forget_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded stratified sample: round(fraction * n_c) images of every class c (True = forget).

    Every class keeps the rest of its images, so D_r holds every class (random-sample forgetting
    must not turn into class-wise forgetting of a small class)."""
    rng = np.random.default_rng([seed, 104729])
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(int(round(fraction * len(idx))), len(idx) - 1)
        mask[rng.choice(idx, k, replace=False)] = True
    return mask


def take_rows(x: Any, index: np.ndarray) -> Any:
    """Rows ``index`` (integers or a boolean mask) of ``x``: a copy of an in-memory array, a lazy
    ``Rows`` view of a memory-mapped one (``image_cache``) or of a view, so a data set larger than
    memory is never gathered whole.

    Args:
        x: images, first axis the examples: a numpy array, a ``np.memmap`` or a ``Rows`` view.
        index: integer row numbers or a boolean mask over the rows of ``x``.
    Returns:
        ``x[index]`` for an in-memory array; otherwise a ``Rows`` view of the same rows.

    Example:
        >>> take_rows(np.arange(5), np.array([True, False, True, False, False])).tolist()
        [0, 2]
    """
    if isinstance(x, np.memmap):
        x = Rows(x, np.arange(len(x)))
    return x.take(index) if isinstance(x, Rows) else x[index]


def make_split(ds: Dataset, forget_class: int | Sequence[int], train_size: int = 0, test_size: int = 0, seed: int = 0,
               forget_fraction: float = 0.0) -> UnlearningSplit:
    """Subsample (optionally) and split a data set for unlearning.

    Class-wise (``forget_fraction`` 0): D_f is the training images of ``forget_class``. Random-sample
    forgetting (``forget_fraction`` > 0): D_f is a seeded stratified sample of that fraction of the
    training set, D_r the rest, TA on the whole test set; ``forget_class`` is then -1.
    """
    check_dataset(ds)
    classes = tuple(int(c) for c in forget_class) if isinstance(forget_class, (list, tuple)) else (int(forget_class),)
    for c in classes if not forget_fraction else ():
        if not 0 <= c < ds.num_classes:
            raise UserError(f"--forget-class {c} is out of range: {ds.name} has classes 0..{ds.num_classes - 1}")
    if len(classes) >= ds.num_classes:
        raise UserError(f"--forget-class {','.join(map(str, classes))} forgets every class of {ds.name}: "
                        "leave at least one class to retain")
    forget_class = classes[-1]
    tr = stratified_indices(ds.y_train, train_size, seed, "data.train_size")
    te = stratified_indices(ds.y_test, test_size, seed + 1, "data.test_size")
    x_tr, y_tr, x_te, y_te = take_rows(ds.x_train, tr), ds.y_train[tr], take_rows(ds.x_test, te), ds.y_test[te]
    if forget_fraction:
        forget_class = -1
        f_tr, f_te = random_forget_mask(y_tr, forget_fraction, seed), np.zeros(len(y_te), bool)
    else:
        f_tr, f_te = np.isin(y_tr, classes), np.isin(y_te, classes)
    split = UnlearningSplit(
        retain=Subset(take_rows(x_tr, ~f_tr), y_tr[~f_tr]),
        forget=Subset(take_rows(x_tr, f_tr), y_tr[f_tr]),
        test_retain=Subset(take_rows(x_te, ~f_te), y_te[~f_te]),
        test_forget=Subset(take_rows(x_te, f_te), y_te[f_te]),
        train=Subset(x_tr, y_tr),
        test=Subset(x_te, y_te),
        forget_class=forget_class,
        forget_classes=() if forget_fraction else classes,
    )
    for name, setting in (("retain", "data.train_size"), ("forget", "data.train_size"),
                          ("test_retain", "data.test_size")):
        if len(getattr(split, name)) == 0:
            what = f"forget fraction {forget_fraction}" if forget_fraction else f"forget class {forget_class}"
            raise UserError(f"the {name} set is empty for {what}: use a larger {setting} (0 keeps all images)")
    return split
