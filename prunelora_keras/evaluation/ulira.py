"""U-LiRA: the per-example likelihood-ratio test of unlearning, from shadow models (pure numpy).

Population attacks ask whether D_f *as a group* looks unseen. Hayes et al. 2024 ("Inexact
Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy", arXiv 2403.01218)
adapt LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles") to ask, per
example, whether a model that *trained on x and unlearned it* can be told from one that *never
trained on x*. This module is the test itself, on confidences the caller computed from pools of
models; it needs no Keras. Choices, following Carlini et al.'s reference code
(``tensorflow/privacy``, ``research/mi_lira_2021``: ``score.py``, ``plot.py``) where it applies:

- **Statistic** (``logit_confidence``): the logit-scaled true-class confidence
  ``log p_y - log(sum_{j != y} p_j)``, from logits in float64 after subtracting the row's maximum
  (never ``log(1 - p)``, which loses everything once p rounds to 1). One query per image.
- **Shadows** (``paired_halves``): S models in complementary pairs, each example in exactly S/2
  of them, seeded, every shadow the same size (Carlini's balanced halves, exact by pairing).
- **Pairs**: the caller gives two pools of the same S shadows, index for index: the *positive*
  pool (e.g. each shadow after unlearning its forget set) with a mask of the examples that count as
  positives for that shadow (x in its forget set), and the *negative* pool (e.g. each shadow's
  half retrained without its forget set) with a mask of the negatives (x never trained on).
- **Gaussians**: per example, the mean and the standard deviation (ddof 0) of the positive scores
  and of the negative scores over the *other* shadows (leave-one-out: shadow k's pair is the target
  and is held out of the fit that scores it, so every target is unseen by its own test and no
  extra target models are trained); ``fixed_variance``: one standard deviation per side, pooled
  over every example (LiRA's option for few shadows). A standard deviation is floored at
  ``1e-6``. An example with fewer than ``min_shadows`` positive or negative fit scores (after
  holding out the target) is not scored for that target; how many are left out is reported.
- **Decision**: the log likelihood ratio ``log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out)``
  above 0 calls the target "unlearned x" (equal priors, no threshold fitted, so a test between two
  identical distributions gives 0.5 up to sampling noise, with no optimism from a searched
  threshold). ``acc``: the balanced accuracy of that decision, (TPR + TNR) / 2 over the positive
  and the negative (target, example) cases; ``tpr_at_fpr``: the fraction of positives above the
  negatives' (1 - f) quantile, the low-FPR regime LiRA argues matters; the interval is a bootstrap
  over examples (each example's cases resampled together).

Example:
    >>> rng = np.random.default_rng(0)
    >>> masks = paired_halves(np.zeros(200, int), 16, seed=0)
    >>> pos = rng.normal(2.0, 1.0, (16, 200)); neg = rng.normal(-2.0, 1.0, (16, 200))
    >>> r = ulira_test(pos, masks, neg, ~masks, bootstrap=0)
    >>> r.acc > 0.95, r.scored_examples
    (True, 200)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SD_FLOOR = 1e-6


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence ``log p_y - log(1 - p_y)`` of each row's true class, stably.

    Args:
        logits: (..., N, classes) logits (a pool's (K, N, classes) too).
        labels: (N,) integer labels.
    Returns:
        float64 scores of shape logits.shape[:-1].

    Example:
        >>> round(float(logit_confidence(np.array([[0.0, np.log(3.0)]]), np.array([1]))[0]), 4)  # log 3: p = 0.75
        1.0986
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    labels = np.asarray(labels)
    true = np.take_along_axis(z, np.broadcast_to(labels[..., None], z.shape[:-1] + (1,)), axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, np.broadcast_to(labels[..., None], z.shape[:-1] + (1,)), -np.inf, axis=-1)
    m = others.max(axis=-1, keepdims=True)
    log_rest = m[..., 0] + np.log(np.exp(others - m).sum(axis=-1))
    return true - log_rest


def paired_halves(groups: np.ndarray, shadows: int, seed: int) -> np.ndarray:
    """(shadows, n) booleans: which examples each shadow trains on, in complementary pairs.

    Shadows 2j and 2j+1 split every group (e.g. forget candidates and the rest) in two exact halves
    by a seeded permutation of pair j: each shadow holds half of each group, so every shadow has
    the same number of examples and of forget candidates (a pool's members must take the same
    number of steps), and every example is in exactly S / 2 shadows (Carlini et al.'s balanced
    halves, made exact by the pairing). A group of odd size leaves one seeded example out of
    every shadow (never trained on, so never scored).

    Args:
        groups: (n,) integer group of each example; each group is halved on its own.
        shadows: S, even and >= 4 (``ulira_test`` fits a per-example variance from S / 2 - 1
            scores a side, so it needs S >= 6 at its default ``min_shadows``).
        seed: the draw's seed.
    Returns:
        the mask; column sums S / 2 (0 for a left-out example), equal row sums.

    Example:
        >>> m = paired_halves(np.array([0, 0, 1, 1, 1, 1]), 4, seed=1)
        >>> m.sum(axis=0).tolist(), m.sum(axis=1).tolist()
        ([2, 2, 2, 2, 2, 2], [3, 3, 3, 3])
    """
    if shadows < 4 or shadows % 2:
        raise ValueError(f"shadows must be an even number >= 4, got {shadows}")
    groups = np.asarray(groups)
    rng = np.random.default_rng([seed, 0])
    members = {g: rng.permutation(np.flatnonzero(groups == g)) for g in np.unique(groups)}
    members = {g: idx[:len(idx) - len(idx) % 2] for g, idx in members.items()}  # an odd one out, once
    mask = np.zeros((shadows, len(groups)), bool)
    for j in range(shadows // 2):
        pair = np.random.default_rng([seed, j + 1])
        for idx in members.values():
            first = pair.permutation(idx)[:len(idx) // 2]
            mask[2 * j, first] = True
            mask[2 * j + 1, np.setdiff1d(idx, first)] = True
    return mask


@dataclass
class ULiRAResult:
    """The attack's outcome on one pair of pools.

    ``acc``: balanced accuracy of the LLR > 0 decision (0.5: indistinguishable, the goal of
    unlearning); ``acc_interval``: its bootstrap 95% interval over examples (nan without a
    bootstrap); ``tpr_at_fpr``: {fpr: TPR}; ``positives``/``negatives``: scored (target, example)
    cases; ``scored_examples``/``skipped_examples``: examples scored for at least one target and
    examples never scored (too few fit shadows); ``llr``: each case's log likelihood ratio and
    ``is_positive``, ``example``: its label and example index (for per-example analysis).
    """

    acc: float
    acc_interval: tuple[float, float]
    tpr_at_fpr: dict[float, float]
    positives: int
    negatives: int
    scored_examples: int
    skipped_examples: int
    llr: np.ndarray = field(repr=False)
    is_positive: np.ndarray = field(repr=False)
    example: np.ndarray = field(repr=False)


def _loo_gaussians(scores: np.ndarray, mask: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, ...]:
    """Per (held-out shadow k, example) mean, standard deviation and count of the masked scores of
    every shadow but k: from totals minus shadow k's own term, so O(S x N)."""
    m = mask.astype(np.float64)
    s = np.where(mask, scores, 0.0)
    count = m.sum(0) - m
    total = s.sum(0) - s
    squares = (s * s).sum(0) - s * s
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = np.maximum(squares / count - mean * mean, 0.0)
    if fixed_variance:  # one spread per side: the pooled within-example variance over every example
        pooled = np.nansum(var * count, axis=1, keepdims=True) / np.maximum(np.nansum(count, axis=1, keepdims=True), 1)
        var = np.broadcast_to(pooled, var.shape)
    return mean, np.maximum(np.sqrt(var), SD_FLOOR), count


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def _balanced_accuracy(llr: np.ndarray, positive: np.ndarray) -> float:
    return 0.5 * (float(np.mean(llr[positive] > 0)) + float(np.mean(llr[~positive] <= 0)))


def _tpr_at(llr: np.ndarray, positive: np.ndarray, fpr: float) -> float:
    """TPR at the lowest threshold whose FPR is at most ``fpr``: strictly above the negatives'
    (floor(fpr x n) + 1)-th largest score."""
    neg = np.sort(llr[~positive])[::-1]
    allowed = int(np.floor(fpr * len(neg)))
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float(np.mean(llr[positive] > threshold))


def ulira_test(pos_scores: np.ndarray, pos_mask: np.ndarray, neg_scores: np.ndarray, neg_mask: np.ndarray, *,
               neg_cases: np.ndarray | None = None, fixed_variance: bool = False, min_shadows: int = 2,
               fprs: tuple[float, ...] = (0.01, 0.001), bootstrap: int = 200, seed: int = 0) -> ULiRAResult:
    """U-LiRA on two pools of the same S shadows (module docstring): shadow k's positive-pool model
    and negative-pool model are the targets of the test fitted on the other S - 1 shadows.

    Args:
        pos_scores, neg_scores: (S, N) statistics (``logit_confidence``) of each pool's models on
            the N candidate examples.
        pos_mask: (S, N) whether example n is a positive case for shadow k's positive model (e.g.
            x was in its forget set); neg_mask: whether it is a negative case for shadow k's
            negative model (e.g. x was never trained on); both masks select the fit scores and
            the cases scored.
        neg_cases: (S, N) the negative cases to score, when they are fewer than ``neg_mask``'s
            (e.g. the negative fit uses every Retrain shadow, the cases only shadow k's own
            forget set, paired one to one with its positive cases); default ``neg_mask``.
        fixed_variance: one standard deviation per side for every example (pooled).
        min_shadows: the fewest fit scores a side may have for an example to be scored.
        fprs: the false-positive rates at which to report the TPR.
        bootstrap: resamples of the examples for the interval of ``acc`` (0: none).
        seed: the bootstrap's seed.
    Returns:
        ``ULiRAResult``.
    Raises:
        ValueError: shapes that differ, fewer than 3 shadows, or no case left to score.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> m = paired_halves(np.zeros(100, int), 8, seed=0)
        >>> same = ulira_test(rng.normal(size=(8, 100)), m, rng.normal(size=(8, 100)), ~m, bootstrap=0)
        >>> abs(same.acc - 0.5) < 0.1
        True
    """
    pos_scores, neg_scores = np.asarray(pos_scores, np.float64), np.asarray(neg_scores, np.float64)
    pos_mask, neg_mask = np.asarray(pos_mask, bool), np.asarray(neg_mask, bool)
    neg_cases = neg_mask if neg_cases is None else np.asarray(neg_cases, bool)
    shapes = {pos_scores.shape, pos_mask.shape, neg_scores.shape, neg_mask.shape, neg_cases.shape}
    if len(shapes) != 1 or pos_scores.ndim != 2:
        raise ValueError(f"scores and masks must all be (shadows, examples) of one shape, got {sorted(shapes)}")
    if pos_scores.shape[0] < 3:
        raise ValueError(f"U-LiRA needs at least 3 shadows (one held out, two to fit), got {pos_scores.shape[0]}")
    if not (np.isfinite(pos_scores[pos_mask]).all() and np.isfinite(neg_scores[neg_mask | neg_cases]).all()):
        raise ValueError("scores are not all finite: compute them with logit_confidence from finite logits")
    mu_in, sd_in, n_in = _loo_gaussians(pos_scores, pos_mask, fixed_variance)
    mu_out, sd_out, n_out = _loo_gaussians(neg_scores, neg_mask, fixed_variance)
    fit = (n_in >= min_shadows) & (n_out >= min_shadows)

    def llr_of(scores):
        return _log_normal(scores, mu_in, sd_in) - _log_normal(scores, mu_out, sd_out)

    take_pos, take_neg = pos_mask & fit, neg_cases & fit
    llr = np.concatenate([llr_of(pos_scores)[take_pos], llr_of(neg_scores)[take_neg]])
    positive = np.concatenate([np.ones(take_pos.sum(), bool), np.zeros(take_neg.sum(), bool)])
    example = np.concatenate([np.nonzero(take_pos)[1], np.nonzero(take_neg)[1]])
    if not positive.any() or positive.all():
        raise ValueError(f"no {'positive' if not positive.any() else 'negative'} case left to score: more shadows, "
                         f"or a lower min_shadows (now {min_shadows})")
    acc = _balanced_accuracy(llr, positive)
    interval = (float("nan"), float("nan"))
    if bootstrap:  # each example's cases resampled together: per-example tallies, weighted by multiplicity
        ids, inverse = np.unique(example, return_inverse=True)
        tally = [np.bincount(inverse, weights=w, minlength=len(ids)) for w in
                 (positive & (llr > 0), positive, ~positive & (llr <= 0), ~positive)]
        rng = np.random.default_rng(seed)
        weights = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
                            for _ in range(bootstrap)]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = 0.5 * (weights @ tally[0] / (weights @ tally[1]) + weights @ tally[2] / (weights @ tally[3]))
        interval = (float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5)))
    scored = int(np.unique(example).size)
    return ULiRAResult(acc, interval, {f: _tpr_at(llr, positive, f) for f in fprs}, int(positive.sum()),
                       int((~positive).sum()), scored, int(pos_scores.shape[1] - scored), llr, positive, example)


def forget_attack(unlearned: np.ndarray, retrained: np.ndarray, forgot: np.ndarray, **kwargs: Any) -> ULiRAResult:
    """U-LiRA on the forget candidates: "unlearned x, or never trained on x?".

    Args:
        unlearned: (S, C) scores of the candidates under each shadow after unlearning (or any pool
            in that role: the originals, for how vulnerable the candidates were; a second Retrain
            pool, for the floor).
        retrained: (S, C) scores under each shadow retrained without its forget set.
        forgot: (S, C) whether shadow k trained on candidate c and unlearned it.
        **kwargs: ``ulira_test``'s options.
    Returns:
        ``ULiRAResult``: positives are shadow k's unlearned model on its own forget set, negatives
        Retrain shadow k on the same candidates (paired, so the two sides are equal in number); the
        IN fit uses the other shadows that forgot c, the OUT fit every other Retrain shadow.

    Example:
        >>> m = paired_halves(np.zeros(50, int), 8, seed=0)
        >>> rng = np.random.default_rng(0)
        >>> r = forget_attack(rng.normal(4, 1, (8, 50)), rng.normal(0, 1, (8, 50)), m, bootstrap=0)
        >>> r.positives == r.negatives == int(m.sum()), r.acc > 0.9
        (True, True)
    """
    forgot = np.asarray(forgot, bool)
    return ulira_test(unlearned, forgot, retrained, np.ones_like(forgot), neg_cases=forgot, **kwargs)


def retain_attack(scores: np.ndarray, trained: np.ndarray, **kwargs: Any) -> ULiRAResult:
    """LiRA's membership test on retained examples within one pool: did shadow k train on x?

    Positives: shadow k on the examples it trained on (and kept); negatives: on those it never saw;
    both Gaussians fitted on the other shadows of the same pool. An unlearned pool scoring higher
    than the original pool means unlearning left the retained examples more exposed.

    Args:
        scores: (S, R) scores of the sampled retained examples under each shadow.
        trained: (S, R) whether shadow k trained on the example.
        **kwargs: ``ulira_test``'s options.
    Returns:
        ``ULiRAResult``.
    """
    trained = np.asarray(trained, bool)
    return ulira_test(scores, trained, scores, ~trained, **kwargs)


def per_example_accuracy(result: ULiRAResult) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, each example's balanced accuracy over its own cases): how exposed each
    example is; nan on a side an example has no case on counts as 0.5 (no information).

    Example:
        >>> r = ULiRAResult(1.0, (1.0, 1.0), {}, 2, 2, 1, 0, np.array([1.0, 2.0, -1.0, -3.0]),
        ...                 np.array([True, True, False, False]), np.zeros(4, int))
        >>> per_example_accuracy(r)[1].tolist()
        [1.0]
    """
    ids, inverse = np.unique(result.example, return_inverse=True)

    def rate(hit: np.ndarray, of: np.ndarray) -> np.ndarray:
        n = np.bincount(inverse, weights=of, minlength=len(ids))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.bincount(inverse, weights=hit & of, minlength=len(ids)) / n, 0.5)

    pos = result.is_positive
    return ids, 0.5 * (rate(result.llr > 0, pos) + rate(result.llr <= 0, ~pos))
