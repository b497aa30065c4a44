"""U-LiRA's test (evaluation/ulira.py) against an independent, loop-by-loop scipy computation."""

import numpy as np
import pytest
from scipy.stats import norm

from prunelora_keras.evaluation.ulira import (SD_FLOOR, ULiRAResult, forget_attack, logit_confidence, paired_halves,
                                              per_example_accuracy, retain_attack, ulira_test)


def _reference_llr(pos, pos_mask, neg, neg_mask, fixed_variance=False, min_shadows=2):
    """Per target shadow k and example n, scipy's Gaussians fitted on the other shadows, in the
    module's case order (positives by (k, n), then negatives by (k, n))."""
    s, n = pos.shape

    def fit(scores, mask, k):
        others = [j for j in range(s) if j != k]
        stats = []
        for e in range(n):
            vals = np.array([scores[j, e] for j in others if mask[j, e]])
            stats.append((vals.mean() if len(vals) else np.nan, vals.std() if len(vals) else np.nan, len(vals)))
        mean, sd, count = map(np.array, zip(*stats))
        if fixed_variance:
            pooled = np.nansum(sd ** 2 * count) / count.sum()
            sd = np.full(n, np.sqrt(pooled))
        return mean, np.maximum(sd, SD_FLOOR), count

    cases = {True: [], False: []}
    for k in range(s):
        mi, si, ci = fit(pos, pos_mask, k)
        mo, so, co = fit(neg, neg_mask, k)
        for positive, scores, mask in ((True, pos, pos_mask), (False, neg, neg_mask)):
            for e in range(n):
                if mask[k, e] and ci[e] >= min_shadows and co[e] >= min_shadows:
                    x = scores[k, e]
                    cases[positive].append(norm.logpdf(x, mi[e], si[e]) - norm.logpdf(x, mo[e], so[e]))
    return np.array(cases[True]), np.array(cases[False])


def _pools(rng, s, n, gap, spread_in=1.0, spread_out=1.0):
    masks = paired_halves(np.zeros(n, int), s, seed=3)
    shift = rng.normal(0, 2, n)  # examples differ in difficulty: the per-example fit matters
    pos = shift + gap + rng.normal(0, spread_in, (s, n))
    neg = shift + rng.normal(0, spread_out, (s, n))
    return pos, masks, neg, ~masks


@pytest.mark.parametrize("fixed_variance", [False, True])
def test_the_likelihood_ratios_match_scipy_case_by_case(fixed_variance):
    rng = np.random.default_rng(0)
    pos, pm, neg, nm = _pools(rng, 6, 9, 0.7, spread_in=rng.uniform(0.3, 2, 9), spread_out=1.0)
    pm[0, 0] = pm[1, 0] = False  # example 0: too few positives for some targets
    r = ulira_test(pos, pm, neg, nm, fixed_variance=fixed_variance, bootstrap=0)
    ref_pos, ref_neg = _reference_llr(pos, pm, neg, nm, fixed_variance)
    np.testing.assert_allclose(r.llr[r.is_positive], ref_pos, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(r.llr[~r.is_positive], ref_neg, rtol=1e-9, atol=1e-9)
    assert r.acc == pytest.approx(0.5 * (np.mean(ref_pos > 0) + np.mean(ref_neg <= 0)))


def test_identical_distributions_are_indistinguishable_and_separated_ones_are_not():
    rng = np.random.default_rng(1)
    same = ulira_test(*_pools(rng, 16, 1500, 0.0), bootstrap=300)
    assert abs(same.acc - 0.5) < 0.03
    assert same.acc_interval[0] < 0.5 < same.acc_interval[1] and same.acc_interval[1] - same.acc_interval[0] < 0.06
    assert same.tpr_at_fpr[0.01] < 0.05
    apart = ulira_test(*_pools(rng, 16, 1500, 6.0), bootstrap=0)
    assert apart.acc > 0.99 and apart.tpr_at_fpr[0.01] > 0.95
    assert (same.scored_examples, same.skipped_examples) == (1500, 0)


def test_fixed_variance_pools_the_spread_and_per_example_variance_does_not():
    """Two examples, positives tight around 1 for one and spread around 1 for the other: with its
    own variance the spread example's far score is still likely "in"; pooled, it is not."""
    s = 8
    masks = np.zeros((s, 2), bool)
    masks[:4] = True
    pos = np.zeros((s, 2))
    pos[:4, 0] = [1.0, 1.1, 0.9, 1.0]          # tight
    pos[:4, 1] = [1.0, 4.0, -2.0, 1.0]        # spread
    neg = np.zeros((s, 2))
    neg[4:, 0] = [-1.0, -1.1, -0.9, -1.0]
    neg[4:, 1] = [-1.0, -0.9, -1.1, -1.0]
    own = ulira_test(pos, masks, neg, ~masks, bootstrap=0)
    pooled = ulira_test(pos, masks, neg, ~masks, fixed_variance=True, bootstrap=0)
    for r, fixed in ((own, False), (pooled, True)):
        ref_pos, ref_neg = _reference_llr(pos, masks, neg, ~masks, fixed)
        np.testing.assert_allclose(r.llr[r.is_positive], ref_pos, rtol=1e-9)
        np.testing.assert_allclose(r.llr[~r.is_positive], ref_neg, rtol=1e-9)
    # the spread example's score -2.0 (target shadow 2): its own wide Gaussian keeps it "in" more than the pooled one
    case = lambda r: r.llr[r.is_positive][(r.example[r.is_positive] == 1)][2]  # noqa: E731
    assert case(own) > case(pooled)


def test_examples_with_too_few_fit_shadows_are_skipped_and_counted():
    rng = np.random.default_rng(2)
    pos, pm, neg, nm = _pools(rng, 6, 6, 1.0)
    assert pm.sum(axis=0).tolist() == [3] * 6  # an even count: no example left out by the halves
    pm[:, 4] = False
    pm[0, 4] = True  # example 4: one positive shadow; held out, nothing left to fit
    r = ulira_test(pos, pm, neg, nm, bootstrap=0)
    # a case is scored only where both sides have >= min_shadows fit scores: example 4 never is
    assert 4 not in r.example and r.skipped_examples == 1 and r.scored_examples == 5
    with pytest.raises(ValueError, match="no positive case left"):
        ulira_test(pos, np.zeros_like(pm), neg, nm)
    with pytest.raises(ValueError, match="at least 3 shadows"):
        ulira_test(pos[:2], pm[:2], neg[:2], nm[:2])
    with pytest.raises(ValueError, match="one shape"):
        ulira_test(pos, pm[:, :3], neg, nm)


def test_tpr_at_low_fpr_by_hand():
    # 10 negatives and 10 positives with known LLRs: at FPR <= 10% one negative may lie above the threshold
    from prunelora_keras.evaluation.ulira import _tpr_at

    neg = np.arange(10.0)            # 0..9
    pos = np.array([8.5, 8.7, 9.5, 10.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    llr = np.r_[pos, neg]
    positive = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    assert _tpr_at(llr, positive, 0.1) == pytest.approx(0.4)   # threshold 8: 8.5, 8.7, 9.5, 10
    assert _tpr_at(llr, positive, 0.0) == pytest.approx(0.2)   # threshold 9: 9.5, 10
    assert _tpr_at(llr, positive, 1.0) == pytest.approx(1.0)


def test_paired_halves_are_balanced_equal_sized_and_seeded():
    groups = np.r_[np.zeros(101, int), np.ones(900, int)]  # 101 candidates: one is left out of every shadow
    m = paired_halves(groups, 16, seed=4)
    assert m.shape == (16, 1001)
    assert set(m.sum(axis=0).tolist()) == {0, 8} and (m.sum(axis=0) == 0).sum() == 1
    assert (m.sum(axis=1) == 500).all()  # every shadow the same size: one step count for the pool
    assert (m[:, :101].sum(axis=1) == 50).all()  # and the same number of candidates (its forget set)
    assert not (m[0::2] & m[1::2]).any()  # pairs are complementary
    assert (paired_halves(groups, 16, seed=4) == m).all() and (paired_halves(groups, 16, seed=5) != m).any()
    assert not (m[0] == m[2]).all()  # each pair draws its own halves
    for bad in (3, 0, 2, 7):
        with pytest.raises(ValueError, match="even number >= 4"):
            paired_halves(groups, bad, seed=0)


def test_forget_attack_pairs_each_unlearned_case_with_retrain_on_the_same_candidate():
    rng = np.random.default_rng(6)
    s, n = 8, 40
    forgot = paired_halves(np.zeros(n, int), s, seed=0)
    unlearned = rng.normal(1.0, 1.0, (s, n))
    retrained = rng.normal(0.0, 1.0, (s, n))
    r = forget_attack(unlearned, retrained, forgot, bootstrap=0)
    assert r.positives == r.negatives == forgot.sum()
    # the same test by hand: IN fit on the other shadows that forgot c, OUT fit on every other Retrain shadow
    ref_pos, ref_neg = _reference_llr(unlearned, forgot, retrained, np.ones_like(forgot))
    all_neg_cases = np.concatenate([[k, e] for k in range(s) for e in range(n)]).reshape(-1, 2)
    keep = forgot[all_neg_cases[:, 0], all_neg_cases[:, 1]]
    np.testing.assert_allclose(r.llr[r.is_positive], ref_pos, rtol=1e-9)
    np.testing.assert_allclose(r.llr[~r.is_positive], ref_neg[keep], rtol=1e-9)
    # Retrain against an independent Retrain pool: the floor, indistinguishable (on 320 cases)
    same = forget_attack(rng.normal(0.0, 1.0, (s, n)), retrained, forgot, bootstrap=0)
    assert abs(same.acc - 0.5) < 0.1


def test_retain_attack_is_membership_within_one_pool():
    rng = np.random.default_rng(7)
    trained = paired_halves(np.zeros(300, int), 8, seed=1)
    scores = rng.normal(0, 1, (8, 300)) + 3.0 * trained
    r = retain_attack(scores, trained, bootstrap=0)
    assert r.positives == trained.sum() and r.negatives == (~trained).sum() and r.acc > 0.8
    assert abs(retain_attack(rng.normal(0, 1, (8, 300)), trained, bootstrap=0).acc - 0.5) < 0.05


def test_per_example_accuracy_by_hand():
    llr = np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5])
    positive = np.array([True, True, False, False, True, False])
    example = np.array([0, 0, 0, 0, 1, 1])
    r = ULiRAResult(0.0, (0.0, 0.0), {}, 3, 3, 2, 0, llr, positive, example)
    ids, acc = per_example_accuracy(r)
    assert ids.tolist() == [0, 1]
    # example 0: TPR 1/2, TNR 1/2; example 1: TPR 1, TNR 1
    np.testing.assert_allclose(acc, [0.5, 1.0])


def test_logit_confidence_is_log_odds_and_stable():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, (3, 50, 7))
    y = rng.integers(0, 7, 50)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    py = np.take_along_axis(p, np.broadcast_to(y[None, :, None], (3, 50, 1)), -1)[..., 0]
    np.testing.assert_allclose(logit_confidence(z, y), np.log(py / (1 - py)), rtol=1e-9, atol=1e-9)
    extreme = logit_confidence(np.array([[800.0, 0.0, -5.0]]), np.array([0]))  # p_y rounds to 1 in float64
    assert np.isfinite(extreme).all() and extreme[0] == pytest.approx(800.0 - np.log(1 + np.exp(-5.0)))
