"""Representation-level forgetting: does the model's *feature space* still hold the forget set?

Output metrics (UA, the MIAs) can be satisfied cosmetically: zeroing the forget class's logit
row, or retraining only the classifier, makes D_f misclassified while every layer below still
encodes what was learnt from it. These metrics look at the penultimate features (the input of
the classifier layer) instead. Pure functions of feature arrays plus a seed.

- ``probe_forget_acc``: a multinomial logistic regression (scikit-learn) fitted on the frozen
  features of a seeded, class-balanced sample of *training* images of every class that includes
  a seeded half of D_f, scored on the other half of D_f (percent). A model whose features still
  carry D_f's training signal separates the held-out half as well as the original does; Retrain,
  which never saw D_f, only as well as its features generalise to unseen images of the class.
- ``probe_forget_acc_test``: the same probe fitted and scored on halves of the *test* set (the
  forget class's test images split in two). It measures how linearly available the class is in
  general, not what was memorised from D_f; on models that generalise poorly (small data) it
  cannot tell the original from Retrain, and on models that generalise well it is the sounder
  of the two (it does not reward memorisation).
- ``linear_cka``: linear centred kernel alignment (Kornblith et al. 2019) between two models'
  features of the same images, in [0, 1]; the pipeline reports it against Retrain on D_f
  (``cka_forget``) and on the retained test images (``cka_retain``).
"""

from __future__ import annotations

import numpy as np

PROBE_MAX_PER_CLASS = 1000  # the probe's fit set per class (bounds its cost at full CIFAR-10 scale)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between feature matrices of the same n examples.

    Args:
        x: (n, d1) features. y: (n, d2) features of the same examples, in the same order.
    Returns:
        ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred X_c, Y_c; NaN when
        either matrix is constant (no variance to align).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 8))
        >>> round(linear_cka(x, 3 * x @ np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0]), 6)
        1.0
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise ValueError(f"linear_cka needs the same examples: {len(x)} and {len(y)} rows")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def probe_accuracy(fit_x: np.ndarray, fit_y: np.ndarray, score_x: np.ndarray, score_y: np.ndarray) -> float:
    """Percent of ``score_x`` that a multinomial logistic regression fitted on (fit_x, fit_y) labels right.

    Features are standardised with the fit set's mean and standard deviation first (a probe on
    raw features would depend on their scale, which differs between models).
    """
    from sklearn.linear_model import LogisticRegression

    fit_x, score_x = np.asarray(fit_x, np.float64), np.asarray(score_x, np.float64)
    mean, std = fit_x.mean(axis=0), fit_x.std(axis=0)
    std[std == 0] = 1.0
    if len(np.unique(fit_y)) < 2:
        raise ValueError("the probe needs at least two classes in its fit set")
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit((fit_x - mean) / std, fit_y)
    return 100.0 * float(np.mean(clf.predict((score_x - mean) / std) == score_y))


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into two halves (the first gets the extra item), sorted."""
    order = np.random.default_rng([seed, 32452843]).permutation(n)
    half = (n + 1) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def balanced_fit_set(pool_x: np.ndarray, pool_y: np.ndarray, must_x: np.ndarray, must_y: np.ndarray,
                     seed: int, max_per_class: int = PROBE_MAX_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """``must`` (every item, up to the cap) topped up from ``pool`` so every class has the same count.

    The count per class is the largest class count in ``must`` (capped at ``max_per_class``); a
    class with fewer items in ``must`` + ``pool`` keeps what it has.
    """
    rng = np.random.default_rng([seed, 49979687])
    classes = np.union1d(np.unique(pool_y), np.unique(must_y))
    target = min(max(int(np.max(np.bincount(must_y))) if len(must_y) else 1, 1), max_per_class)
    xs, ys = [], []
    for c in classes:
        mine = np.flatnonzero(must_y == c)[:target]
        rest = np.flatnonzero(pool_y == c)
        extra = rng.choice(rest, min(len(rest), target - len(mine)), replace=False) if target > len(mine) else rest[:0]
        xs += [must_x[mine], pool_x[extra]]
        ys += [must_y[mine], pool_y[extra]]
    return np.concatenate(xs), np.concatenate(ys)


def probe_forget_acc(retain_x: np.ndarray, retain_y: np.ndarray, forget_x: np.ndarray, forget_y: np.ndarray,
                     seed: int = 0) -> float:
    """Linear-probe accuracy (percent) on a held-out half of the forget set.

    Args:
        retain_x, retain_y: features and labels of retained images (the rest of every class).
        forget_x, forget_y: features and labels of the forget set; a seeded half joins the fit set
            (class-balanced with ``retain``), the other half is scored.
        seed: seeds the halves and the balanced sample.
    Returns:
        Accuracy in percent on the scored half (NaN when the forget set has fewer than 2 items).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> rx, ry = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 6, 20, 0), np.repeat([0, 1, 2], 20)
        >>> fx, fy = rng.normal(size=(20, 4)) + np.eye(4)[3] * 6, np.full(20, 3)
        >>> probe_forget_acc(rx, ry, fx, fy)
        100.0
    """
    if len(forget_y) < 2:
        return float("nan")
    fit_idx, score_idx = split_halves(len(forget_y), seed)
    fit_x, fit_y = balanced_fit_set(retain_x, retain_y, forget_x[fit_idx], forget_y[fit_idx], seed)
    return probe_accuracy(fit_x, fit_y, forget_x[score_idx], forget_y[score_idx])
