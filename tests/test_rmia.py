"""RMIA against independent computations: the signals (AMUN's signals.py transcribed), the score as
RMIA's double sum over population points, the AUC against scikit-learn, and the test's calibration
(a target drawn like its references scores 50)."""

from math import factorial

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prunelora_keras.evaluation.rmia import auc_pct, rmia_scores, rmia_test, tpr_at_fpr_pct, true_class_probability


def _amun_taylor_soft_margin(logits, labels, temp=2.0, m=0.6, n=4):
    """AMUN's ``signals.py`` 'taylor-soft-margin', line for line (get_taylor's loop)."""

    def taylor(v):
        power, out = v, v + 1.0
        for i in range(2, n):
            power = power * v
            out = out + power / factorial(i)
        return out

    z = logits / temp
    t = taylor(z)
    true = z[np.arange(len(labels)), labels]
    total = t.sum(1) - t[np.arange(len(labels)), labels] + taylor(true - m)
    return taylor(true - m) / total


def test_signals_match_the_softmax_and_amuns_taylor_soft_margin():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 3, (50, 10)), rng.integers(0, 10, 50)
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(true_class_probability(logits, labels), soft[np.arange(50), labels], rtol=1e-12)
    np.testing.assert_allclose(true_class_probability(logits, labels, "taylor_soft_margin"),
                               _amun_taylor_soft_margin(logits, labels), rtol=1e-12)
    np.testing.assert_allclose(true_class_probability(logits[None].repeat(3, 0), labels)[2], soft[np.arange(50), labels])
    with pytest.raises(ValueError, match="unknown RMIA signal"):
        true_class_probability(logits, labels, "lira")


@pytest.mark.parametrize("offline_a", [0.33, None])
def test_scores_are_rmias_fraction_of_dominated_population_points(offline_a):
    rng = np.random.default_rng(1)
    k, n, m, gamma = 3, 40, 70, 2.0
    target, refs = rng.uniform(0.01, 1, n), rng.uniform(0.01, 1, (k, n))
    pop, pop_refs = rng.uniform(0.01, 1, m), rng.uniform(0.01, 1, (k, m))
    marginal = (lambda r: r.mean(0)) if offline_a is None else (lambda r: ((1 + offline_a) * r.mean(0) + 1 - offline_a) / 2)
    want = np.zeros(n)
    for i in range(n):  # RMIA's definition: a double loop over (x, z)
        lr_x = target[i] / marginal(refs)[i]
        want[i] = np.mean([lr_x / (pop[j] / marginal(pop_refs)[j]) > gamma for j in range(m)])
    np.testing.assert_allclose(rmia_scores(target, refs, pop, pop_refs, gamma=gamma, offline_a=offline_a), want)
    with pytest.raises(ValueError, match="offline_a in"):
        rmia_scores(target, refs, pop, pop_refs, offline_a=1.5)


def test_auc_with_ties_is_scikit_learns_and_tpr_at_fpr_is_the_quantiles():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 20, 300) / 20.0, rng.integers(0, 15, 500) / 20.0  # many ties
    want = 100 * roc_auc_score(np.r_[np.ones(300), np.zeros(500)], np.r_[pos, neg])
    assert auc_pct(pos, neg) == pytest.approx(want, abs=1e-9)
    pos, neg = rng.normal(1, 1, 400), rng.normal(0, 1, 1000)
    for fpr in (0.01, 0.001, 0.1):
        threshold = min(t for t in np.r_[neg, np.inf] if np.mean(neg > t) <= fpr)  # the lowest admissible
        assert tpr_at_fpr_pct(pos, neg, fpr) == pytest.approx(100 * np.mean(pos > threshold))




def test_rmia_test_scores_50_for_a_retrain_like_target_and_high_for_one_that_kept_d_f():
    rng = np.random.default_rng(3)
    n_f, n_t, classes = 400, 800, 10
    labels = {"forget": rng.integers(0, classes, n_f), "test_retain": rng.integers(0, classes, n_t)}
    seed_f, seed_t = rng.normal(0, 1, (n_f, classes)), rng.normal(0, 1, (n_t, classes))

    def models(k, kept):
        f = seed_f[None] + rng.normal(0, 0.5, (k, n_f, classes))
        if kept:
            f[:, np.arange(n_f), labels["forget"]] += 2.0
        return {"forget": f, "test_retain": seed_t[None] + rng.normal(0, 0.5, (k, n_t, classes))}

    refs = models(4, kept=False)  # Retrain models: D_f and the test images unseen
    like_retrain = rmia_test({k: v[0] for k, v in models(1, kept=False).items()}, refs, labels)
    kept = rmia_test(models(3, kept=True), refs, labels)  # a pool of three targets
    assert abs(like_retrain.auc - 50) < 5 and kept.auc > 90 and kept.tpr_at_1pct > like_retrain.tpr_at_1pct
    assert (like_retrain.forget, like_retrain.nonmembers + like_retrain.population, like_retrain.references) == (400, 800, 4)
    with pytest.raises(ValueError, match="K reference models"):
        rmia_test({k: v[0] for k, v in refs.items()}, {k: v[0] for k, v in refs.items()}, labels)


def test_evaluate_reports_rmia_with_the_reference_as_the_reference_model():
    import keras

    import prunelora_keras as plk

    rng = np.random.default_rng(4)
    y = np.arange(240) % 3
    x = (rng.normal(size=(240, 6)) + np.eye(3, 6)[y] * 1.5).astype(np.float32)
    f, test = (y == 0) & (np.arange(240) < 120), np.arange(240) >= 120
    retain = ~f & ~test

    def fit(mask, seed):
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
        m.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x[mask], y[mask], epochs=30, batch_size=20, verbose=0)
        return m

    original, retrained = fit(~test, 0), fit(retain, 1)
    scores = plk.evaluate(original, (x[retain], y[retain]), (x[f], y[f]), (x[test], y[test]), reference=retrained)
    gone = test & (y == 0)  # class-wise: D_f is compared with the forgotten class's unseen test images
    sets = {"forget": x[f], "test_forget": x[gone]}
    want = rmia_test({k: original.predict(v, verbose=0) for k, v in sets.items()},
                     {k: retrained.predict(v, verbose=0)[None] for k, v in sets.items()},
                     {"forget": y[f], "test_forget": y[gone]}, nonmember="test_forget")
    assert scores["MIA_rmia_auc"] == pytest.approx(want.auc, abs=1e-6) and scores["rmia_references"] == 1
    assert scores["MIA_rmia_auc"] > 55  # the original saw D_f: RMIA finds it
    retrain_like = plk.evaluate(fit(retain, 2), (x[retain], y[retain]), (x[f], y[f]), (x[test], y[test]),
                                reference=retrained)
    assert 30 < retrain_like["MIA_rmia_auc"] < 70  # another model that never saw D_f: near 50, not near 0
    assert "MIA_rmia_auc" not in plk.evaluate(original, (x[retain], y[retain]), (x[f], y[f]), (x[test], y[test]))


def test_scores_with_a_signal_that_can_be_negative_follow_the_comparison_as_written():
    rng = np.random.default_rng(5)
    target, refs = rng.uniform(-0.5, 1, 30), rng.uniform(0.2, 1, (2, 30))  # the Taylor signal can go below 0
    pop, pop_refs = rng.uniform(-0.5, 1, 50), rng.uniform(0.2, 1, (2, 50))
    lr_x, lr_z = target / refs.mean(0), pop / pop_refs.mean(0)
    want = np.array([np.mean([(a / b) > 2.0 for b in lr_z]) for a in lr_x])
    np.testing.assert_allclose(rmia_scores(target, refs, pop, pop_refs, gamma=2.0, offline_a=None), want)
