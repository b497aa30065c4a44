"""RMIA: the low-cost membership attack with reference models (pure numpy).

Zarifzadeh, Liu, Lee, Shokri, "Low-Cost High-Power Membership Inference Attacks" (ICML 2024). A
population attack (``metrics.mia_svc``) asks whether D_f *looks* unseen; RMIA asks, per image, whether
the target model likes it more than models that never saw it would, *relative to how much it likes
images known to be unseen*. AMUN (ICML 2025) reports it for its random-forgetting table ("FT AUC"). The
pipeline runs it with one offline reference model (Retrain) and the softmax signal, where AMUN uses 128
online references and the soft-margin signal (both available below): the same attack, not on the same
scale, so our column is not read against AMUN's numbers one for one.

For a target point x with label y:
- ``Pr(x | theta)``: the target model's probability of y (``true_class_probability``: the softmax,
  RMIA's signal; ``"taylor_soft_margin"``: AMUN's default, a soft-margin softmax with the exponential
  replaced by its 4th-order Taylor polynomial, logits / 2, margin 0.6).
- ``Pr(x)``: the same probability averaged over reference models. Offline (``offline_a`` given;
  every reference is OUT for the points scored): ``((1 + a) mean_out + (1 - a)) / 2``, RMIA's
  approximation of the IN/OUT average from OUT models only (a = 0.33: the default of privacy-meter-derived
  code; the RMIA paper tunes a per data set with a paired reference model, which one reference cannot do).
  Online (``offline_a=None``): the plain mean, for references that hold x in about half of them (AMUN's).
- the score: the fraction of population points z whose likelihood ratio x beats by more than
  ``gamma``: ``mean_z [ (Pr(x|theta) / Pr(x)) / (Pr(z|theta) / Pr(z)) > gamma ]`` (AMUN: gamma 2).

``rmia_test`` scores D_f (called members: the unlearned model should *fail* to find them) against
unseen images of the same distribution, half of the unseen set serving as the population z and the
other half as the non-member targets (so no point is compared with itself), and reports the ROC AUC
(percent; 50: D_f looks exactly as unseen as unseen images do, Retrain's expected value) and the TPR at
low FPR. The unseen images must be of D_f's classes (``rmia_unseen_set``): for class-wise forgetting the
forgotten class's test images, for random forgetting the test set. Compared with other classes' images,
a forgotten class would score near 0 for Retrain itself (its images are less likely under any model
that does not know the class), and 50 would mean nothing.
In the experiment the references are Retrain models: they never saw D_f or the test images, so every
point is OUT and the offline form applies; one Retrain model suffices (the attack's point), and
``--eval-models K`` gives K.

Example:
    >>> rng = np.random.default_rng(0)
    >>> refs = {"forget": rng.normal(size=(2, 300, 10)), "test": rng.normal(size=(2, 400, 10))}
    >>> target = {"forget": refs["forget"][0] + 3 * np.eye(10)[np.zeros(300, int)], "test": refs["test"][0]}
    >>> labels = {"forget": np.zeros(300, int), "test": rng.integers(0, 10, 400)}
    >>> rmia_test(target, refs, labels, nonmember="test").auc > 90  # the target fits D_f: found
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SIGNALS = ("softmax", "taylor_soft_margin")
OFFLINE_A = 0.33  # privacy meter's default for the offline approximation
GAMMA = 2.0  # AMUN's evaluation/RMIA.py


def true_class_probability(logits: np.ndarray, labels: np.ndarray, signal: str = "softmax",
                           temperature: float = 1.0) -> np.ndarray:
    """The probability of each row's label, computed in float64.

    Args:
        logits: (..., N, classes).
        labels: (N,) integer labels.
        signal: ``"softmax"`` (of ``logits / temperature``) or ``"taylor_soft_margin"`` (AMUN's
            ``signals.py``: z = logits / 2, ``t(z_y - 0.6) / (sum_{j != y} t(z_j) + t(z_y - 0.6))`` with
            ``t(v) = 1 + v + v^2/2 + v^3/6``, negative below v = -1.6, as theirs; ``temperature`` is ignored).
        temperature: the softmax temperature.
    Returns:
        (..., N) probabilities.

    Example:
        >>> float(true_class_probability(np.zeros((1, 4)), np.array([2]))[0])
        0.25
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown RMIA signal {signal!r}: choose one of {', '.join(SIGNALS)}")
    z = np.asarray(logits, np.float64)
    onehot = np.eye(z.shape[-1], dtype=bool)[np.asarray(labels)]
    if signal == "softmax":
        z = z / temperature
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e * onehot).sum(-1) / e.sum(-1)
    z = z / 2.0
    z = np.where(onehot, z - 0.6, z)
    t = 1.0 + z + z ** 2 / 2.0 + z ** 3 / 6.0
    return (t * onehot).sum(-1) / t.sum(-1)


def rmia_unseen_set(labels: Mapping[str, np.ndarray]) -> str:
    """The evaluation set RMIA compares D_f with: ``"test_forget"`` (the forgotten classes' test images)
    where the split has one (class-wise forgetting), else ``"test_retain"`` (random forgetting: the test set).

    Example:
        >>> rmia_unseen_set({"forget": [0], "test_retain": [1, 2]}), rmia_unseen_set({"test_forget": [0]})
        ('test_retain', 'test_forget')
    """
    return "test_forget" if "test_forget" in labels else "test_retain"


def _marginal(references: np.ndarray, offline_a: float | None) -> np.ndarray:
    mean = np.mean(references, axis=0)
    return mean if offline_a is None else 0.5 * ((1.0 + offline_a) * mean + (1.0 - offline_a))


def rmia_scores(target: np.ndarray, references: np.ndarray, population: np.ndarray,
                population_references: np.ndarray, *, gamma: float = GAMMA,
                offline_a: float | None = OFFLINE_A) -> np.ndarray:
    """RMIA's score of each target point: the fraction of population points it dominates.

    Args:
        target: (N,) the target model's ``Pr(x | theta)`` on the points scored.
        references: (K, N) the reference models' on the same points.
        population: (M,) the target model's on the population points z.
        population_references: (K, M) the reference models' on them.
        gamma: the likelihood-ratio threshold (> 0).
        offline_a: RMIA's offline coefficient in [0, 1] (references all OUT); None: online (the plain mean).
    Returns:
        (N,) scores in [0, 1]: larger reads "member".

    Example:
        >>> rmia_scores(np.array([0.9, 0.1]), np.array([[0.5, 0.5]]), np.array([0.5, 0.5]),
        ...             np.array([[0.5, 0.5]]), gamma=1.0, offline_a=None).tolist()
        [1.0, 0.0]
    """
    if gamma <= 0 or (offline_a is not None and not 0.0 <= offline_a <= 1.0):
        raise ValueError(f"RMIA needs gamma > 0 and offline_a in [0, 1] (or None), got {gamma}, {offline_a}")
    ratio_x = np.asarray(target, np.float64) / _marginal(np.asarray(references, np.float64), offline_a)
    ratio_z = np.asarray(population, np.float64) / _marginal(np.asarray(population_references, np.float64), offline_a)
    if np.all(ratio_z > 0):  # ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma: count by binary search
        return np.searchsorted(np.sort(ratio_z), ratio_x / gamma, side="left") / len(ratio_z)
    out = np.empty(len(ratio_x))  # a signal that can be <= 0 (AMUN's Taylor polynomial): the comparison as written
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, len(ratio_x), 1024):
            out[start:start + 1024] = np.mean(ratio_x[start:start + 1024, None] / ratio_z[None] > gamma, axis=1)
    return out


def auc_pct(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC in percent of scores (positives above negatives), ties counted half (Mann-Whitney).

    Args:
        positives, negatives: 1-D scores; larger reads "positive".
    Returns:
        the AUC in percent (50: no separation).

    Example:
        >>> auc_pct(np.array([3.0, 2.0]), np.array([1.0, 2.0]))
        87.5
    """
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(100.0 * u / (len(pos) * len(neg)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # ranks from 1; a tie gets the mean of its ranks
    return ranks


def tpr_at_fpr_pct(positives: np.ndarray, negatives: np.ndarray, fpr: float) -> float:
    """The share (percent) of positives scored above the negatives' (1 - ``fpr``) quantile (the
    threshold no more than ``fpr`` of the negatives exceed).

    Args:
        positives, negatives: 1-D scores; larger reads "positive".
        fpr: the false-positive rate allowed, in [0, 1].
    Returns:
        the true-positive rate in percent.

    Example:
        >>> tpr_at_fpr_pct(np.array([5.0, 0.5]), np.arange(10.0) / 10, 0.1)
        50.0
    """
    neg = np.sort(np.asarray(negatives, np.float64))
    allowed = int(np.floor(fpr * len(neg)))  # negatives that may lie above the threshold
    threshold = neg[len(neg) - allowed - 1] if allowed < len(neg) else -np.inf
    return float(100.0 * np.mean(np.asarray(positives) > threshold))


@dataclass
class RMIAResult:
    """``auc`` (percent), ``tpr_at_1pct`` and ``tpr_at_01pct`` (percent at FPR 1% and 0.1%), averaged
    over the target models given; the counts of scored forget points, non-member targets and population
    points, and the number of reference models (``rmia_test``'s result).

    Example:
        >>> RMIAResult(50.0, 1.0, 0.1, 5000, 5000, 5000, 1).auc
        50.0
    """

    auc: float
    tpr_at_1pct: float
    tpr_at_01pct: float
    forget: int
    nonmembers: int
    population: int
    references: int


def rmia_test(target_logits: Mapping[str, np.ndarray], reference_logits: Mapping[str, np.ndarray],
              labels: Mapping[str, np.ndarray], *, forget: str = "forget", nonmember: str = "test_retain",
              seed: int = 0, gamma: float = GAMMA, offline_a: float | None = OFFLINE_A,
              signal: str = "softmax") -> RMIAResult:
    """RMIA of D_f against unseen images, for one target model or a pool of them.

    Args:
        target_logits: {set: (N, classes)} of the target model, or (T, N, classes) for T targets.
        reference_logits: {set: (K, N, classes)} of K reference models that never saw either set.
        labels: {set: (N,)}.
        forget, nonmember: the names of D_f and of the unseen set; the unseen set is split in two,
            seeded: half the population z, half the non-member targets.
        seed: the split's seed.
        gamma, offline_a: as ``rmia_scores``.
        signal: as ``true_class_probability``.
    Returns:
        ``RMIAResult`` (each target attacked with every reference; averages over targets).

    Example:
        >>> sets = {"forget": x_f, "test_retain": x_t}  # doctest: +SKIP
        >>> result = plk.rmia_test({k: pool.logits(x) for k, x in sets.items()},  # K unlearned models  # doctest: +SKIP
        ...                        {k: oracle.logits(x) for k, x in sets.items()},  # K retrained models
        ...                        {"forget": y_f, "test_retain": y_t})
        >>> result.auc  # 50: D_f looks as unseen as the test images  # doctest: +SKIP
    """
    n_unseen = len(labels[nonmember])
    if n_unseen < 2 or len(labels[forget]) == 0:
        raise ValueError(f"RMIA needs forget points and at least 2 unseen points ({nonmember}), got "
                         f"{len(labels[forget])} and {n_unseen}")
    order = np.random.default_rng([seed, 4721]).permutation(n_unseen)
    pop, held = np.sort(order[: n_unseen // 2]), np.sort(order[n_unseen // 2:])
    p = {s: true_class_probability(target_logits[s], labels[s], signal) for s in (forget, nonmember)}
    r = {s: true_class_probability(reference_logits[s], labels[s], signal) for s in (forget, nonmember)}
    if r[forget].ndim != 2:
        raise ValueError("reference_logits must hold (K, N, classes) arrays: K reference models")
    targets = [p[forget]] if p[forget].ndim == 1 else list(p[forget])
    unseen = [p[nonmember]] if p[nonmember].ndim == 1 else list(p[nonmember])
    aucs, tpr1, tpr01 = [], [], []
    for t_forget, t_unseen in zip(targets, unseen):
        kwargs = dict(gamma=gamma, offline_a=offline_a)
        s_forget = rmia_scores(t_forget, r[forget], t_unseen[pop], r[nonmember][:, pop], **kwargs)
        s_held = rmia_scores(t_unseen[held], r[nonmember][:, held], t_unseen[pop], r[nonmember][:, pop], **kwargs)
        aucs.append(auc_pct(s_forget, s_held))
        tpr1.append(tpr_at_fpr_pct(s_forget, s_held, 0.01))
        tpr01.append(tpr_at_fpr_pct(s_forget, s_held, 0.001))
    return RMIAResult(float(np.mean(aucs)), float(np.mean(tpr1)), float(np.mean(tpr01)), len(labels[forget]),
                      len(held), len(pop), int(r[forget].shape[0]))
