"""Forgetting quality and KLoM (forgetting_quality.py) against independent numpy implementations
written from the definitions (the challenge's metric.py, data-unlearning-bench's eval.py): dense
model x threshold comparisons where the package counts with searchsorted, np.histogram where it
compares against bin edges, on synthetic confidences and logits."""

import decimal
import math

import numpy as np
import pytest

from prunelora_keras.evaluation import forgetting_quality as fq

DELTA = 1e-5


def _dense_double_rates(pos, neg):
    """metric.py's double-threshold (FPR, FNR), dense: the peakier pool is positive, "positive iff
    l <= c <= r" for every model against every rule (l > r: no model is inside)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    pr, nr = pos.max() - pos.min(), neg.max() - neg.min()
    p2, n2 = (neg, pos) if pr >= nr else (pos, neg)
    width = min(pr, nr)
    lo, hi = p2.min() + width - 2.0, p2.max() + 2.0
    rights = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
    lefts = np.stack([np.linspace(r - width - 2.0, r - width + 2.0, 400) for r in rights]).reshape(-1)
    rights = np.repeat(rights, 400)

    def inside(pool):
        return np.mean((lefts[None] <= pool[:, None]) & (pool[:, None] <= rights[None]), axis=0)

    return inside(n2), 1 - inside(p2)


def _dense_epsilon(pos, neg):
    """metric.py's per-example epsilon, dense: every rule's rates as means over the models."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    pr, nr = pos.max() - pos.min(), neg.max() - neg.min()
    largest, smallest = max(pr, nr), min(pr, nr)
    if largest > 0 and smallest / largest < 0.01:
        return 50.0
    fpr_d, fnr_d = _dense_double_rates(pos, neg)
    fprs, fnrs = [fpr_d], [fnr_d]
    both = np.concatenate([pos, neg])
    singles = np.linspace(both.min(), both.max(), int(np.ceil((both.max() - both.min()) * 100)))
    fprs.append(np.mean(neg[:, None] >= singles[None], axis=0))
    fnrs.append(np.mean(pos[:, None] < singles[None], axis=0))
    fpr, fnr = np.concatenate(fprs), np.concatenate(fnrs)
    if ((fpr + fnr) == 0).any():
        return 50.0
    keep = fpr * fnr != 0
    if not keep.any():
        return 0.0
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(1 - DELTA - fpr > 0, np.log(np.abs(1 - DELTA - fpr)) - np.log(fnr), -np.inf)
        b = np.where(1 - DELTA - fnr > 0, np.log(np.abs(1 - DELTA - fnr)) - np.log(fpr), -np.inf)
    return float(min(max(np.max(np.maximum(a, b)), 0.0), 50.0))


def _dense_score(unlearned, retrained):
    """F: each example's positive pool by median, its epsilon, the 2^-k points, the mean."""
    k = unlearned.shape[0]
    max_eps = math.ceil(math.log(k - 1))
    points = []
    for i in range(unlearned.shape[1]):
        u, r = unlearned[:, i], retrained[:, i]
        e = _dense_epsilon(r, u) if np.median(r) > np.median(u) else _dense_epsilon(u, r)
        start, value, got = 0.0, 1.0, 0.0
        while start + 0.5 <= max_eps:
            if e < start + 0.5:
                got = value
                break
            start, value = start + 0.5, value / 2
        points.append(got)
    return float(np.mean(points))


def _np_kl(p, q):
    """eval.py's binned KL per example, with np.histogram's closed last bin."""
    out = []
    for i in range(p.shape[1]):
        a, b = np.clip(p[:, i], -100, 100), np.clip(q[:, i], -100, 100)
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if lo >= hi:
            hi = lo + 1
        edges = np.linspace(lo, hi, 21)
        pc, _ = np.histogram(a, edges)
        qc, _ = np.histogram(b, edges)
        pp, qp = pc / pc.sum(), qc / qc.sum()
        qs = np.where(pp > 0, np.maximum(qp, 1e-5), qp)
        qs = qs / qs.sum()
        m = pp > 0
        out.append(float(np.sum(pp[m] * np.log(pp[m] / qs[m]))))
    return np.asarray(out)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.7, 1.0), (3.0, 1.0), (0.0, 2.5), (0.0, 0.3), (0.4, 0.15)])
def test_epsilon_and_score_match_a_dense_implementation(shift, scale):
    rng = np.random.default_rng(int(shift * 10 + scale * 3))
    k, n = 12, 5
    unlearned = rng.normal(shift, scale, size=(k, n))
    retrained = rng.normal(0.0, 1.0, size=(k, n))
    eps = fq.epsilons(unlearned, retrained)
    dense = [(_dense_epsilon(retrained[:, i], unlearned[:, i]) if np.median(retrained[:, i]) > np.median(unlearned[:, i])
              else _dense_epsilon(unlearned[:, i], retrained[:, i])) for i in range(n)]
    np.testing.assert_allclose(eps, dense, rtol=1e-6, atol=1e-9)
    assert fq.forget_score(unlearned, retrained)[0] == pytest.approx(_dense_score(unlearned, retrained))


def test_same_distribution_scores_far_above_shifted_and_near_the_ceiling_numbers():
    rng = np.random.default_rng(0)
    k, n = 64, 60
    retrained = rng.normal(size=(k, n))
    same, _ = fq.forget_score(rng.normal(size=(k, n)), retrained)
    ceiling, _ = fq.forget_score(rng.normal(size=(k, n)), retrained)  # a second same-distribution pool
    shifted, eps_shifted = fq.forget_score(rng.normal(size=(k, n)) + 3.0, retrained)
    assert 0.1 < same < 0.35 and 0.1 < ceiling < 0.35  # the finite-pool ceiling: about 0.19 at K = 64
    assert abs(same - ceiling) < 0.1
    assert shifted < 0.02 and shifted < same / 10
    assert np.median(eps_shifted) > 3.0


def test_fully_separated_pools_score_zero_and_hit_the_cap():
    rng = np.random.default_rng(1)
    unlearned, retrained = rng.normal(size=(16, 4)) + 20.0, rng.normal(size=(16, 4))
    score, eps = fq.forget_score(unlearned, retrained)
    assert score == 0.0
    np.testing.assert_array_equal(eps, 50.0)


def test_epsilon_is_symmetric_in_which_pool_is_positive():
    rng = np.random.default_rng(2)
    for _ in range(5):
        a, b = rng.normal(0.5, 1.0, 10), rng.normal(0.0, 1.3, 10)
        assert fq.example_epsilon(a, b) == pytest.approx(fq.example_epsilon(b, a))
        assert fq.epsilons(a[:, None], b[:, None])[0] == pytest.approx(fq.epsilons(b[:, None], a[:, None])[0])


def test_peaky_pool_scores_the_cap_and_two_equal_constants_zero():
    rng = np.random.default_rng(3)
    assert fq.example_epsilon(np.full(8, 2.0) + rng.normal(0, 1e-4, 8), rng.normal(size=8)) == 50.0
    assert fq.example_epsilon(np.full(8, 1.0), np.full(8, 1.0)) == 0.0


def test_bucket_points_follow_the_challenge():
    # K = 64: ceil(log 63) = 5, ten bins of 0.5: 1, 1/2, ..., 1/512, then 0
    np.testing.assert_allclose(fq.bucket_points(np.array([0.0, 0.49, 0.5, 4.99, 5.0, 50.0]), 64),
                               [1.0, 1.0, 0.5, 2.0 ** -9, 0.0, 0.0])


def test_forgetting_quality_multiplies_the_accuracy_ratios():
    rng = np.random.default_rng(4)
    u, r = rng.normal(size=(8, 6, 4)), rng.normal(size=(8, 6, 4))
    labels = rng.integers(0, 4, 6)
    plain = fq.forgetting_quality(u, r, labels)
    scaled = fq.forgetting_quality(u, r, labels, ra=(90.0, 100.0), ta=(80.0, 100.0))
    assert scaled.score == pytest.approx(plain.score * 0.9 * 0.8)
    assert scaled.forget_score == plain.score


def test_confidence_and_margin_against_their_formulas():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 7, 5)) * 4
    labels = rng.integers(0, 5, 7)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    py = p[:, np.arange(7), labels]
    np.testing.assert_allclose(fq.logit_scaled_confidence(logits, labels), np.log(py) - np.log(1 - py), rtol=1e-9)
    others = logits.copy()
    others[:, np.arange(7), labels] = -np.inf
    expected = logits[:, np.arange(7), labels] - np.log(np.exp(others).sum(-1))
    np.testing.assert_allclose(fq.margins(logits, labels), expected, rtol=1e-9)


def test_klom_matches_histogram_kl_and_is_zero_for_identical_pools():
    rng = np.random.default_rng(6)
    p, q = rng.normal(size=(32, 9)), rng.normal(0.5, 1.5, size=(32, 9))
    p[:, 0] = 3.0  # a pool at one value, the joint maximum: eval.py's digitize would drop it all
    np.testing.assert_allclose(fq.binned_kl(p, q), _np_kl(p, q), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(fq.binned_kl(p, p), 0.0)
    logits = rng.normal(size=(16, 5, 3))
    np.testing.assert_allclose(fq.klom(logits, logits, np.zeros(5, int)), 0.0)
    assert (fq.binned_kl(p + 10, p) > 5).all()  # separated pools: large


def _exact_confidence(row, label):
    """log p_y - log(sum_{j != y} p_j), with metric.py's 1e-45 in each log, from the definition:
    softmax and sums in 60-digit decimal arithmetic (independent of float64 rounding)."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        e = [decimal.Decimal(float(v)).exp() for v in row]
        total = sum(e)
        p = [v / total for v in e]
        wrong = sum(p[j] for j in range(len(p)) if j != label)
        floor = decimal.Decimal("1e-45")
        return float((p[label] + floor).ln() - (wrong + floor).ln())


def _exact_confidences(logits, labels):
    return np.array([[_exact_confidence(logits[m, i], labels[i]) for i in range(logits.shape[1])]
                     for m in range(logits.shape[0])])


@pytest.mark.parametrize("gap", [30.0, 37.0, 40.0, 45.5, 52.0, 60.0])
def test_confidence_is_exact_for_confident_models(gap):
    # two classes, closed form: log sigmoid(d) - log sigmoid(-d) = d, the label-logit gap
    two = fq.logit_scaled_confidence(np.array([[[gap, 0.0], [1.0, 1.0 + gap]]]), np.array([0, 1]))
    np.testing.assert_allclose(two, [[gap, gap]], rtol=1e-13)
    # ten classes against 60-digit arithmetic
    rng = np.random.default_rng(int(gap))
    logits = rng.normal(size=(3, 4, 10))
    labels = rng.integers(0, 10, 4)
    logits[:, np.arange(4), labels] = logits.max(-1) + gap + rng.normal(0, 0.5, (3, 4))
    np.testing.assert_allclose(fq.logit_scaled_confidence(logits, labels), _exact_confidences(logits, labels),
                               rtol=1e-12)


def test_confidence_keeps_metric_py_floor_and_is_exact_for_wrong_predictions():
    z = np.array([[[200.0, 0.0], [0.0, 200.0], [-60.0, 0.0]]])
    conf = fq.logit_scaled_confidence(z, np.array([0, 0, 0]))[0]
    np.testing.assert_allclose(conf, [-math.log(1e-45), math.log(1e-45), -60.0], rtol=1e-12)


def test_forgetting_quality_of_a_confident_pool_matches_the_exact_confidences():
    # label-logit gaps 34-52: sum(p) - p_y rounds to 0 for most models and made the pool look constant
    rng = np.random.default_rng(0)
    k, n, c = 16, 8, 10
    labels = rng.integers(0, c, n)

    def pool(gap_mean):
        z = rng.normal(size=(k, n, c))
        z[:, np.arange(n), labels] = z.max(-1) + rng.normal(gap_mean, 3.0, size=(k, n))
        return z

    unlearned, retrained = pool(44.0), pool(43.0)
    exact = _dense_score(_exact_confidences(unlearned, labels), _exact_confidences(retrained, labels))
    got = fq.forgetting_quality(unlearned, retrained, labels)
    assert got.score == pytest.approx(exact, abs=1e-12)
    # the same pools 40 logits less confident (where nothing rounds): each confidence moves by -40, the score stays
    easy_u, easy_r = unlearned.copy(), retrained.copy()
    easy_u[:, np.arange(n), labels] -= 40.0
    easy_r[:, np.arange(n), labels] -= 40.0
    assert fq.forgetting_quality(easy_u, easy_r, labels).score == pytest.approx(got.score, abs=1e-12)


@pytest.mark.parametrize("scales", [(0.3, 1.0), (0.05, 0.6), (1.5, 1.0)])
def test_double_threshold_rates_are_rates_and_match_dense_rules(scales):
    # a peakier pool narrower than 2 puts left thresholds past right ones: those rules take nothing
    rng = np.random.default_rng(7)
    a, b = np.sort(rng.normal(0.0, scales[0], 16)), np.sort(rng.normal(0.2, scales[1], 16))
    fpr, fnr = fq._rates_double(a, b)
    assert fpr.min() >= 0 and fpr.max() <= 1 and fnr.min() >= 0 and fnr.max() <= 1
    dense_fpr, dense_fnr = _dense_double_rates(a, b)
    np.testing.assert_allclose(fpr, dense_fpr, atol=1e-12)
    np.testing.assert_allclose(fnr, dense_fnr, atol=1e-12)
    assert fq.example_epsilon(a, b) == pytest.approx(_dense_epsilon(a, b))


def _margins_np(logits, labels):
    idx = np.arange(logits.shape[1])
    others = logits.copy()
    others[:, idx, labels] = -np.inf
    return logits[:, idx, labels] - np.log(np.exp(others).sum(-1))


def test_klom_computes_either_direction_and_defaults_to_run_py():
    # run.py: kl_from_margins(oracle_margins, margins) -> KL(oracle || unlearned)
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, 6)
    unlearned = rng.normal(size=(16, 6, 4)) * 0.3  # a narrow pool: the directions differ much
    oracle = rng.normal(size=(16, 6, 4)) * 2.0
    mu, mo = _margins_np(unlearned, labels), _margins_np(oracle, labels)
    forward = fq.klom(unlearned, oracle, labels)
    np.testing.assert_allclose(forward, _np_kl(mo, mu), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fq.klom(unlearned, oracle, labels, direction="oracle||unlearned"), forward)
    backward = fq.klom(unlearned, oracle, labels, direction="unlearned||oracle")
    np.testing.assert_allclose(backward, _np_kl(mu, mo), rtol=1e-9, atol=1e-12)
    assert forward.mean() > backward.mean() + 1.0  # the oracle's mass where the narrow pool has none
    with pytest.raises(ValueError, match="direction must be one of"):
        fq.klom(unlearned, oracle, labels, direction="symmetric")


def _eval_py_kl(p, q, closed_last):
    """unlearning_bench/eval.py's compute_binned_KL_div (np.digitize, scipy's entropy); with
    closed_last the last edge moves up by one ulp so a sample at the joint maximum stays."""
    from scipy import stats

    p, q = np.clip(p, -100, 100), np.clip(q, -100, 100)
    lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
    if lo >= hi:
        hi = lo + 1
    bins = np.linspace(lo, hi, 21)
    if closed_last:
        bins[-1] = np.nextafter(bins[-1], np.inf)
    pc = np.array([np.sum(np.digitize(p, bins) == i) for i in range(1, 21)])
    qc = np.array([np.sum(np.digitize(q, bins) == i) for i in range(1, 21)])
    pp, qp = pc / pc.sum(), qc / qc.sum()
    return float(stats.entropy(pk=pp, qk=np.where(pp > 0, np.maximum(qp, 1e-5), qp)))


def test_closed_last_bin_is_the_only_difference_from_eval_py_and_changes_every_example():
    rng = np.random.default_rng(9)
    p, q = rng.normal(size=(16, 12)), rng.normal(0.4, 1.2, size=(16, 12))
    ours = fq.binned_kl(p, q)
    closed = [_eval_py_kl(p[:, i], q[:, i], closed_last=True) for i in range(12)]
    digitize = [_eval_py_kl(p[:, i], q[:, i], closed_last=False) for i in range(12)]
    np.testing.assert_allclose(ours, closed, rtol=1e-9, atol=1e-12)
    assert (np.abs(ours - np.asarray(digitize)) > 1e-6).all()  # every example: the joint max is dropped there
