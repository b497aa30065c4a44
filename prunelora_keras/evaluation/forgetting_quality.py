"""Many-model scores: forgetting quality (NeurIPS 2023 challenge) and KLoM, per example.

Population attacks ask whether D_f *as a group* looks unseen. These scores ask, for each example,
whether the unlearned model's output is distributed like the outputs of models that never saw it.
Both need pools of models (``training/pool_trainer.py`` trains them as one compiled program); here they are
pure numpy functions of the pools' logits, shape (K models, N examples, C classes).

Forgetting quality (google-deepmind/unlearning_evaluation, ``metric.py``)
- Per model and example, the logit-scaled confidence log p_y - log(sum_{j != y} p_j), 1e-45 inside
  each log (as LiRA), in log space from the logits (float64 logsumexp over the other classes):
  metric.py sums the other classes' probabilities; 1 - p_y or sum(p) - p_y would round to 0 for
  a confident model (label-logit gap above ~37) and saturate the confidence at 103.6.
- Per example, the pool with the larger median is "positive". Over a grid of decision rules
  (single threshold: "positive iff c >= t" on 100 thresholds per unit over both pools' range;
  double threshold: "positive iff l <= c <= r" on the peakier pool, right thresholds 100 per unit,
  400 left ones per right one over +-2 around r - width; a left threshold past its right one
  takes nothing), epsilon = the largest
  max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR) (clipped at 0), delta = 1e-5.
  A rule that separates the pools perfectly gives infinity; rules with FPR or FNR zero (not both)
  are discarded (too few samples to say). An example whose pools' ranges differ by more than 100x
  ("very peaky") scores the cap, 50; every epsilon is clipped to [0, 50].
- Epsilon is binned in widths 0.5 up to ceil(log(K - 1)); bin k scores 2^-k, beyond 0; F is the
  mean over D_f. The final score is F * (RA_u / RA_r) * (TA_u / TA_r) (pool-mean accuracies).
- K bounds the score: with K models per pool no rule can show more than about log(K - 1), and
  the threshold search overfits finite pools, so two pools of the *same* distribution do not
  score 1 (``forgetting_quality_ceiling``: a second Retrain pool against the first).

Choices where ``metric.py`` is unclear, all written down:
- Rates are counted with sorted pools and ``searchsorted`` on exactly ``metric.py``'s threshold
  grid (its dense model x threshold comparison, a faster route to the same counts: a double
  threshold's count is clipped at 0 where l > r, as l <= c <= r holds for no c), in float64
  where ``metric.py`` takes float32 means.
- ``metric.py`` asserts when no rule survives (it happens when both pools are one and the same
  constant); that example gets epsilon 0 here: no rule can tell the pools apart.
- Its peaky check divides by the larger range; two constant pools (0 / 0) skip it, as there.

KLoM (RoyRin/data-unlearning-bench, ``unlearning_bench/eval.py``, called from ``unlearning_bench/run.py``)
- Per model and example, the margin logit_y - logsumexp(other logits).
- Per example, a KL divergence between 20-bin histograms over both pools' joint range (margins
  clipped to [-100, 100]; one unit wide if the range is empty), the second pool's empty bins
  floored at 1e-5 where the first has mass, both normalised (``scipy.stats.entropy``).
- Direction: KL(oracle || unlearned) by default, as ``run.py`` computes it (it passes the oracle's
  margins where ``eval.py``'s ``kl_from_margins`` names the unlearned ones); ``klom(...,
  direction="unlearned||oracle")`` gives the other.
- One deviation, in every example: ``eval.py``'s ``np.digitize`` puts a sample equal to the joint
  maximum past the last bin and drops it. The joint maximum is always some pool's sample, so every
  example loses at least one sample from one histogram there (a pool whose samples all sit at the
  maximum gets an empty one and a NaN score). Here the last bin includes its right edge
  (``np.histogram``'s convention), so no sample is dropped and every example's score differs from
  ``eval.py``'s (mean |difference| about 0.2 at K = 16, 0.1 at K = 32 on two normal pools).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
BIN_WIDTH = 0.5
KLOM_BINS = 20
KLOM_EPS = 1e-5
KLOM_CLIP = 100.0
KLOM_DIRECTIONS = ("oracle||unlearned", "unlearned||oracle")


def _check_pool(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if logits.ndim != 3 or logits.shape[1] != labels.shape[0]:
        raise ValueError(f"logits must be (models, examples, classes) with one label per example; got "
                         f"{logits.shape} and {labels.shape}")
    return logits, labels


def _label_and_other_logsumexp(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logit_y, logsumexp of the other classes' logits, logsumexp of all logits), each (K, N), float64."""
    logits, labels = _check_pool(logits, labels)
    correct = np.take_along_axis(logits, labels[None, :, None], axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels[None, :, None], -np.inf, axis=-1)

    def logsumexp(z: np.ndarray) -> np.ndarray:
        top = z.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)  # no other class: log 0 = -inf, not NaN
        with np.errstate(divide="ignore"):
            return top[..., 0] + np.log(np.exp(z - top).sum(axis=-1))

    return correct, logsumexp(others), logsumexp(logits)


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y - log(sum_{j != y} p_j) per model and example: (K, N, C) logits, (N,) labels -> (K, N).

    Computed in log space (float64): log p_y = logit_y - logsumexp(logits), log sum_{j != y} p_j =
    logsumexp(other logits) - logsumexp(logits). Forming 1 - p_y, or sum(p) - p_y, from probabilities
    instead loses every digit once p_y rounds to 1 (a label-logit gap above ~37): the confidence
    saturates at the floor's 103.6. metric.py's 1e-45 inside each log is kept, as log(p + 1e-45) =
    logaddexp(log p, log 1e-45): it bounds the confidence to +-103.6 (so the threshold grid stays
    bounded) and moves it by about exp(|conf| - 103.6), under 1e-6 for |conf| < 90.

    Example:
        >>> import numpy as np
        >>> round(float(logit_scaled_confidence(np.log([[[0.75, 0.25]]]), np.array([0]))[0, 0]), 4)  # log 3
        1.0986
        >>> float(logit_scaled_confidence(np.array([[[50.0, 0.0]]]), np.array([0]))[0, 0])  # two classes: the gap
        50.0
    """
    correct, other, total = _label_and_other_logsumexp(logits, labels)
    floor = math.log(1e-45)
    return np.logaddexp(correct - total, floor) - np.logaddexp(other - total, floor)


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """logit_y - logsumexp(other logits) per model and example: (K, N, C), (N,) -> (K, N).

    Example:
        >>> import numpy as np
        >>> round(float(margins(np.array([[[2.0, 0.0, 0.0]]]), np.array([0]))[0, 0]), 4)  # 2 - log 2
        1.3069
    """
    correct, other, _ = _label_and_other_logsumexp(logits, labels)
    return correct - other


# ----------------------------------------------------------------------------- forgetting quality


def _rates_single(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of "positive iff c >= t" over metric.py's single-threshold grid."""
    lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
    thresholds = np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
    fnr = np.searchsorted(pos, thresholds, "left") / len(pos)
    fpr = 1.0 - np.searchsorted(neg, thresholds, "left") / len(neg)
    return fpr, fnr


def _rates_double(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of "positive iff l <= c <= r" over metric.py's double-threshold grid, the peakier
    pool (smaller range) taken as positive.

    Left thresholds reach r - width + 2, past r whenever the peakier pool is narrower than 2: such a
    rule takes nothing as positive (metric.py compares l <= c <= r). Counted as #(c <= r) - #(c < l),
    it would be minus the samples in (r, l), a negative rate; it is clipped at 0, which is exact."""
    pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
    width = neg_range if pos_range > neg_range else pos_range
    if pos_range >= neg_range:
        pos, neg = neg, pos
    lo, hi = pos[0] + width - BUFFER, pos[-1] + BUFFER
    right = np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
    n_left = int(math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT))
    left = np.linspace(right - width - BUFFER, right - width + BUFFER, n_left, axis=-1).reshape(-1)
    right = np.repeat(right, n_left)

    def inside(sorted_pool: np.ndarray) -> np.ndarray:
        count = np.searchsorted(sorted_pool, right, "right") - np.searchsorted(sorted_pool, left, "left")
        return np.maximum(count, 0) / len(sorted_pool)

    tpr, fpr = inside(pos), inside(neg)
    return fpr, 1.0 - tpr


def example_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float = DELTA) -> float:
    """The best epsilon over metric.py's decision rules telling pool ``pos`` from pool ``neg``
    (one example's confidences under each model of the two pools)."""
    pos, neg = np.sort(np.asarray(pos, np.float64)), np.sort(np.asarray(neg, np.float64))
    pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    if largest > 0 and smallest / largest < 0.01:  # a very peaky pool: metric.py's cap
        return EPSILON_CAP
    fpr_d, fnr_d = _rates_double(pos, neg)
    fpr_s, fnr_s = _rates_single(pos, neg)
    fpr, fnr = np.concatenate([fpr_d, fpr_s]), np.concatenate([fnr_d, fnr_s])
    separated = (fpr + fnr) == 0
    if separated.any():
        return EPSILON_CAP  # infinity, clipped
    usable = (fpr * fnr) != 0
    if not usable.any():
        return 0.0
    fpr, fnr = fpr[usable], fnr[usable]
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr))
    eps = eps[~np.isnan(eps)]
    return float(np.clip(np.max(np.clip(eps, 0, None)), 0, EPSILON_CAP)) if len(eps) else 0.0


def epsilons(unlearned_confs: np.ndarray, retrained_confs: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Per example epsilon between two pools of confidences, each (K, N): the pool with the larger
    median is positive for that example, as in metric.py. Returns (N,)."""
    unlearned_confs, retrained_confs = np.asarray(unlearned_confs), np.asarray(retrained_confs)
    if unlearned_confs.shape[1] != retrained_confs.shape[1]:
        raise ValueError("both pools must score the same examples")
    retrain_positive = np.median(retrained_confs, axis=0) > np.median(unlearned_confs, axis=0)
    out = np.empty(unlearned_confs.shape[1])
    for i in range(len(out)):
        u, r = unlearned_confs[:, i], retrained_confs[:, i]
        out[i] = example_epsilon(r, u, delta) if retrain_positive[i] else example_epsilon(u, r, delta)
    return out


def bucket_points(eps: np.ndarray, num_models: int) -> np.ndarray:
    """Each epsilon's points: bin k = [0.5 k, 0.5 (k + 1)) scores 2^-k up to ceil(log(K - 1)), then 0."""
    max_eps = math.ceil(math.log(num_models - 1)) if num_models > 2 else 0
    buckets = int(round(max_eps / BIN_WIDTH))
    k = np.floor(np.asarray(eps, np.float64) / BIN_WIDTH)
    return np.where(k < buckets, np.exp2(-k), 0.0)


def forget_score(unlearned_confs: np.ndarray, retrained_confs: np.ndarray) -> tuple[float, np.ndarray]:
    """(F, per-example epsilon): F = mean over examples of each epsilon's points (``bucket_points``).

    The number of models in the unlearned pool sets the bins, as in metric.py.
    """
    eps = epsilons(unlearned_confs, retrained_confs)
    return float(np.mean(bucket_points(eps, np.shape(unlearned_confs)[0]))), eps


@dataclass
class ForgettingQuality:
    """The challenge's score and its parts.

    ``score`` = ``forget_score`` * (RA_u / RA_r) * (TA_u / TA_r); ``epsilon``: per example of D_f;
    ``num_models``: K (it bounds how fine the score can be).
    """

    score: float
    forget_score: float
    retain_ratio: float
    test_ratio: float
    epsilon: np.ndarray
    num_models: int


def forgetting_quality(unlearned_logits: np.ndarray, retrained_logits: np.ndarray, labels: np.ndarray,
                       ra: tuple[float, float] = (1.0, 1.0), ta: tuple[float, float] = (1.0, 1.0)
                       ) -> ForgettingQuality:
    """The NeurIPS 2023 unlearning challenge's forgetting quality of an unlearned pool.

    Args:
        unlearned_logits: (K, N, C) logits on D_f of K unlearned models.
        retrained_logits: (K', N, C) logits on D_f of K' models retrained without D_f.
        labels: (N,) the labels of D_f.
        ra: (pool-mean accuracy on D_r of the unlearned models, of the retrained ones).
        ta: (the same on the test set).
    Returns:
        ``ForgettingQuality``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> same = forgetting_quality(rng.normal(size=(16, 8, 3)), rng.normal(size=(16, 8, 3)), np.zeros(8, int))
        >>> far = forgetting_quality(rng.normal(size=(16, 8, 3)) + [9, 0, 0], rng.normal(size=(16, 8, 3)),
        ...                          np.zeros(8, int))
        >>> same.score > far.score
        True
    """
    labels = np.asarray(labels)
    f, eps = forget_score(logit_scaled_confidence(unlearned_logits, labels),
                          logit_scaled_confidence(retrained_logits, labels))
    retain_ratio = ra[0] / ra[1] if ra[1] else 0.0
    test_ratio = ta[0] / ta[1] if ta[1] else 0.0
    return ForgettingQuality(f * retain_ratio * test_ratio, f, retain_ratio, test_ratio, eps,
                             int(np.shape(unlearned_logits)[0]))


# ----------------------------------------------------------------------------- KLoM


def binned_kl(p: np.ndarray, q: np.ndarray, bins: int = KLOM_BINS, eps: float = KLOM_EPS,
              clip: float = KLOM_CLIP) -> np.ndarray:
    """KL(p || q) per example between the histograms of two pools' samples, each (K, N) -> (N,).

    Bins: ``bins`` equal intervals over the joint range of both pools (after clipping to
    [-clip, clip]; one unit wide if empty), the last one closed. q's empty bins are floored at
    ``eps`` where p has mass; both histograms are normalised.
    """
    p = np.clip(np.asarray(p, np.float64), -clip, clip)
    q = np.clip(np.asarray(q, np.float64), -clip, clip)
    start = np.minimum(p.min(axis=0), q.min(axis=0))
    end = np.maximum(p.max(axis=0), q.max(axis=0))
    end = np.where(start >= end, start + 1.0, end)
    edges = np.linspace(start, end, bins + 1, axis=-1)  # (N, bins + 1)
    inner = edges[:, 1:-1]

    def counts(pool: np.ndarray) -> np.ndarray:
        index = (pool.T[:, :, None] >= inner[:, None, :]).sum(-1)  # (N, K): the bin of each sample
        return np.stack([(index == b).sum(-1) for b in range(bins)], axis=-1).astype(np.float64)

    pc, qc = counts(p), counts(q)
    pp = pc / pc.sum(-1, keepdims=True)
    qp = qc / qc.sum(-1, keepdims=True)
    qp = np.where(pp > 0, np.maximum(qp, eps), qp)
    qp = qp / qp.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pp > 0, pp * np.log(pp / qp), 0.0)
    return terms.sum(-1)


def klom(unlearned_logits: np.ndarray, oracle_logits: np.ndarray, labels: np.ndarray,
         direction: str = "oracle||unlearned") -> np.ndarray:
    """KLoM per example: the KL divergence between the oracle and the unlearned pools' margin histograms.

    KL is not symmetric, and which pool's empty bins get the 1e-5 floor depends on the order.
    ``eval.py``'s ``kl_from_margins(unlearned, oracle)`` computes KL(unlearned || oracle), but the
    benchmark's own ``run.py`` calls it as ``kl_from_margins(oracle_margins, margins)``: the scores
    it reports are KL(oracle || unlearned), which is the default here. That direction asks how
    badly the unlearned pool covers where the oracle's margins lie (an unlearned pool narrower than
    the oracle's scores high); the other asks whether the unlearned pool puts margins where the
    oracle never does.

    Args:
        unlearned_logits: (K, N, C) logits of K unlearned models.
        oracle_logits: (K', N, C) logits of K' oracle (retrained) models on the same examples.
        labels: (N,) their labels.
        direction: ``"oracle||unlearned"`` (the benchmark's run.py) or ``"unlearned||oracle"``.
    Returns:
        (N,) the KL divergence per example in ``direction`` (0: indistinguishable at this K and binning).

    Example:
        >>> import numpy as np
        >>> logits = np.random.default_rng(0).normal(size=(8, 4, 3))
        >>> klom(logits, logits, np.zeros(4, int)).tolist()
        [0.0, 0.0, 0.0, 0.0]
    """
    if direction not in KLOM_DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(map(repr, KLOM_DIRECTIONS))}; got {direction!r}")
    unlearned, oracle = margins(unlearned_logits, labels), margins(oracle_logits, labels)
    return binned_kl(oracle, unlearned) if direction == "oracle||unlearned" else binned_kl(unlearned, oracle)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, median and 95th percentile of per-example values."""
    values = np.asarray(values, np.float64)
    return {"mean": float(np.mean(values)), "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95))}
