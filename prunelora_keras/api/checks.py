"""What the library refuses before it trains or scores, and what it warns about.

``plk.unlearn``, ``plk.evaluate`` and the pools take a user's own model and arrays. Three things
would give numbers computed on the wrong thing without a word, so each is refused here with one
line that names the fix (``ValueError``):

- a model that outputs probabilities (a softmax, sigmoid or any other non-linear activation on
  the output layer, or outputs that sum to one): every loss here is softmax cross-entropy on
  logits, and the attacks read logit-derived scores; probabilities would be softmaxed twice;
- labels that are not integers in ``[0, classes)`` (an out-of-range label becomes an all-zero
  one-hot row and silently drops out of the loss), empty sets, one-hot rows that are not one-hot;
- an empty training pass (``epochs`` < 1 would return a pruned or wrapped but untrained model).

A model at chance on the retained data is not refused (it may be what a user wants to show), but
every score against it is meaningless: ``chance_warnings`` says so in one line per model, both as
a Python warning and in the result (``evaluate``'s ``"warnings"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from prunelora_keras.evaluation.features import output_activation  # noqa: F401  (re-exported)
from prunelora_keras.training.inference import predict_inputs

CHANCE_MARGIN = 5.0  # points above the majority-class rate that still count as chance


class ChanceLevelWarning(UserWarning):
    """A model scores within ``CHANCE_MARGIN`` points of chance on the retained data."""




def require_logits(model: keras.Model, x_sample: np.ndarray | None = None, what: str = "model") -> int:
    """Refuse a model whose outputs are not logits; returns its number of classes.

    Args:
        model: a functional or Sequential Keras classifier with one output.
        x_sample: a few inputs: refused too when its outputs are non-negative and sum to one on
            every row (probabilities from a layer the structural check cannot see, e.g. a Lambda).
        what: the model's role in the message ("model", "reference", "original").
    Returns:
        the number of classes (the output's last dimension).
    Raises:
        ValueError: one line naming the layer and the fix.

    Example:
        >>> require_logits(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
        3
    """
    fix = ("rebuild it to output logits (keras.applications: classifier_activation=None; your own model: the "
           "last Dense/Conv2D with no activation, then copy the weights) and pass that model")
    found = output_activation(model)
    if found is not None:
        raise ValueError(f"the {what} {model.name} outputs {found[1]} of its layer {found[0]!r}, not logits (the "
                         f"losses and attacks here need logits): {fix}")
    if x_sample is not None and len(x_sample):
        # One compiled forward, the one ``untrained_warnings`` uses (batch 256): a model called eagerly
        # compiles each of its operations apart (a MobileNetV3: 243 programs, about 8 s).
        out = predict_inputs(model, x_sample, 256).astype(np.float64)
        if out.ndim == 2 and out.shape[1] > 1 and (out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError(f"the {what} {model.name}'s outputs are non-negative and sum to 1 on every sample: they "
                             f"are probabilities, not logits: {fix}")
    return int(model.output_shape[-1])


def labelled_arrays(data: Any, name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 inputs, int64 labels) from (x, y) arrays or a ``keras.utils.PyDataset``, checked.

    Args:
        data: (x, y) with y integer labels or one-hot rows, or a PyDataset of such batches.
        name: the set's name in messages ("retain", "forget", "test").
        num_classes: the model's classes: every label must lie in ``[0, num_classes)``.
    Returns:
        (x as float32, y as int64).
    Raises:
        ValueError: an empty set, lengths that differ, labels that are not integers, out of range,
            or one-hot rows that are not one-hot.

    Example:
        >>> x, y = labelled_arrays((np.zeros((2, 3)), [0, 2]), "retain", 3)
        >>> y.tolist()
        [0, 2]
    """
    if isinstance(data, keras.utils.PyDataset):
        parts = [data[i] for i in range(len(data))]
        if not parts:
            raise ValueError(f"{name} is an empty PyDataset: pass at least one batch")
        x, y = np.concatenate([np.asarray(p[0]) for p in parts]), np.concatenate([np.asarray(p[1]) for p in parts])
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        raise ValueError(f"{name} must be (x, y) arrays or a keras.utils.PyDataset, got {type(data).__name__}")
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels: expected one label each")
    y = checked_labels(y, name, num_classes)
    return (x if x.dtype == np.float32 else x.astype(np.float32)), y


def checked_labels(y: Any, name: str, num_classes: int) -> np.ndarray:
    """``y`` (integer labels, or one-hot rows) as int64 labels in ``[0, num_classes)``; ValueError
    (one line) for an empty set, non-integers, out-of-range labels, rows that are not one-hot.

    Example:
        >>> checked_labels(np.eye(3)[[2, 0]], "forget", 3).tolist()
        [2, 0]
    """
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot rows, exactly
        if y.shape[1] != num_classes or not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise ValueError(f"{name}: labels of shape {y.shape} are not one-hot rows of the model's {num_classes} "
                             "classes: pass integer labels, or rows with a single 1")
        y = np.argmax(y, axis=1)
    if y.ndim != 1:
        raise ValueError(f"{name}: labels of shape {y.shape}: expected one integer label each")
    if len(y) == 0:
        raise ValueError(f"{name} is empty: pass at least one sample")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name}: labels must be whole class numbers, got e.g. {y[y != np.round(y)][:1]}")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} label(s) outside 0..{num_classes - 1}, the model's classes (e.g. "
                         f"{y[bad][0].item()!r}): relabel the data, or give the model as many outputs as classes")
    return y.astype(np.int64)


def require_epochs(epochs: Any) -> int:
    """``epochs`` as an int >= 1; ValueError otherwise (zero epochs would return an untrained model)."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}: an unlearning method needs a training pass")
    return int(epochs)


def chance_pct(labels: np.ndarray) -> float:
    """The accuracy of always answering the most frequent label: chance on this data, in percent."""
    return 100.0 * float(np.bincount(np.asarray(labels)).max()) / max(len(labels), 1)


def chance_warnings(retain_acc: dict[str, float], retain_labels: np.ndarray, warn: bool = True) -> list[str]:
    """One line per model whose accuracy on the retained data is within ``CHANCE_MARGIN`` points of
    chance (``chance_pct``): scores against such a model (UA, Avg. Gap, ToW) say nothing.

    Args:
        retain_acc: {role ("unlearned", "reference", "original"): accuracy on D_r in percent}.
        retain_labels: D_r's labels.
        warn: also issue each line as a ``ChanceLevelWarning``.
    Returns:
        the lines (empty when every model is above chance).

    Example:
        >>> chance_warnings({"unlearned": 12.0}, np.arange(90) % 9, warn=False)[0][:40]
        'the unlearned model is at chance on the '
    """
    chance = chance_pct(retain_labels)
    lines = [f"the {role} model is at chance on the retained data ({acc:.1f}% against {chance:.1f}% for always "
             f"answering the most frequent class): its scores say nothing; check its training (e.g. BatchNorm "
             f"statistics in inference mode) before trusting them"
             for role, acc in retain_acc.items() if acc <= chance + CHANCE_MARGIN]
    if warn:
        for line in lines:
            warnings.warn(line, ChanceLevelWarning, stacklevel=3)
    return lines


def forgotten_classes(retain_y: np.ndarray, forget_y: np.ndarray) -> list[int]:
    """The classes of D_f that D_r lacks: what a class-wise unlearning removed (none for random samples).

    Example:
        >>> forgotten_classes(np.array([0, 1, 1]), np.array([1, 2, 2]))
        [2]
    """
    return sorted(int(c) for c in set(np.unique(forget_y)) - set(np.unique(retain_y)))


def split_test(x: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> tuple[tuple, tuple | None, str]:
    """A test set cut into the remaining classes' samples (TA, the attacks' non-members) and the forgotten
    ``classes``' samples (held-out D_f), with a line saying what was moved, or "" when nothing was.

    Why: a model that forgot a class scores 0 on that class's test images by design; left in, they
    lower TA by the class's share (84.2 against 93.8 on one ten-class model) and make the attacks' non-members
    unlike their members, with no sign that anything is off.

    Args:
        x, y: the test set as given (checked labels).
        classes: the forgotten classes (``forgotten_classes``).
    Returns:
        ((x, y) of the remaining classes, (x, y) of the forgotten ones or None, the note).
    Raises:
        ValueError: the test set holds nothing but forgotten classes.

    Example:
        >>> kept, gone, note = split_test(np.zeros((4, 1)), np.array([0, 3, 1, 3]), [3])
        >>> kept[1].tolist(), gone[1].tolist(), note
        ([0, 1], [3, 3], 'test: 2 samples of the forgotten class(es) 3 left out of TA and the attacks (held-out D_f)')
    """
    gone = np.isin(y, np.asarray(list(classes), y.dtype))
    if not gone.any():
        return (x, y), None, ""
    if gone.all():
        raise ValueError("test holds only samples of the forgotten classes: pass held-out samples of the remaining "
                         "classes (and these as test_forget)")
    note = (f"test: {int(gone.sum())} samples of the forgotten class(es) {', '.join(map(str, classes))} left out of TA "
            "and the attacks (held-out D_f)")
    return (x[~gone], y[~gone]), (x[gone], y[gone]), note
