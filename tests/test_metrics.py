import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from prunelora_keras.evaluation.metrics import (accuracy_pct, add_avg_gap, attack_sizes, cross_entropy, entropy,
    mia_loss_logreg, mia_svc, modified_entropy, stratified_sample, svc_feature,
    tug_of_war, unlearning_accuracy, unlearning_metrics)


def test_accuracies_on_known_inputs():
    logits = np.array([[3.0, 1.0], [0.0, 2.0], [5.0, -1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    assert accuracy_pct(logits, labels) == 50.0
    assert unlearning_accuracy(logits, labels) == 50.0
    assert unlearning_accuracy(logits[:1], labels[:1]) == 0.0


def test_cross_entropy_is_minus_log_softmax():
    logits = np.array([[1.0, 2.0, 3.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    assert np.exp(-cross_entropy(logits, np.array([1])))[0] == pytest.approx(p[0, 1])
    assert cross_entropy(logits, np.array([2]))[0] == pytest.approx(-np.log(p[0, 2]))


def test_loss_attack_against_independent_sklearn_run():
    rng = np.random.default_rng(0)
    retain = rng.exponential(0.05, 1000)  # members: small losses
    test = rng.exponential(1.0, 400)  # non-members: larger losses
    forget = np.concatenate([np.full(30, 0.01), np.full(70, 5.0)])  # 70% look like non-members
    res = mia_loss_logreg(retain, test, forget, members=1000, nonmembers=1000, seed=3)
    assert (res.n_members, res.n_nonmembers) == (400, 400)  # one common scale: limited by |test| = 400
    # independent: the same draws, the same classifier, by hand
    r = np.random.default_rng(3)
    m = r.choice(retain, 400, replace=False)
    n = r.choice(test, 400, replace=False)
    clf = LogisticRegression().fit(np.concatenate([m, n])[:, None], np.r_[np.zeros(400), np.ones(400)])
    assert res.efficacy == pytest.approx(100 * np.mean(clf.predict(forget[:, None]) == 1))
    assert res.efficacy == pytest.approx(70.0)
    assert res.attack_accuracy > 70 and not res.degenerate()
    again = mia_loss_logreg(retain, test, forget, 1000, 1000, seed=3)
    assert again == res  # seeded


def test_confidence_attack_against_independent_svc():
    rng = np.random.default_rng(1)
    retain = np.clip(rng.normal(0.97, 0.02, 800), 0, 1)
    test = np.clip(rng.normal(0.6, 0.2, 300), 0, 1)
    forget = np.r_[np.full(40, 0.99), np.full(60, 0.3)]
    res = mia_svc(retain, test, forget, seed=5)
    assert (res.n_members, res.n_nonmembers) == (300, 300)  # min(|D_r|, |test|) members
    members = retain[stratified_sample(np.zeros(800, int), 300, 5)]
    x = np.r_[members, test][:, None]
    y = np.r_[np.ones(300), np.zeros(300)]
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    assert res.efficacy == pytest.approx(100 * (1 - clf.predict(forget[:, None]).mean()))
    assert res.efficacy == pytest.approx(60.0)


def test_shadow_members_are_a_class_stratified_sample_not_the_first_classes():
    # D_r stored class by class: classes 0-1 easy (confidence ~0.99), 2-4 hard (~0.5, like unseen data).
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 100)
    retain = np.where(labels < 2, rng.normal(0.99, 0.003, 500), rng.normal(0.5, 0.05, 500))
    test = rng.normal(0.5, 0.05, 200)
    res = mia_svc(retain, test, test[:10], retain_labels=labels, seed=0)
    # 200 members = 40 per class: 80 easy ones separable, 120 hard ones indistinguishable from the
    # 200 non-members (the SVC calls that region non-member): (80 + 200) / 400 = 70% shadow accuracy.
    # The first-|test| draw (members = classes 0-1 only) would separate perfectly: 100%.
    assert res.attack_accuracy == pytest.approx(70.0, abs=3.0)
    picked = labels[stratified_sample(labels, 200, 0)]
    assert np.bincount(picked).tolist() == [40] * 5


def test_stratified_sample_sizes_and_seeding():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1)
    idx = stratified_sample(labels, 5, 3)
    assert len(idx) == 5 and len(set(idx)) == 5
    # exact shares 3.5, 1.0, 0.5: floors 3, 1, 0, the one left over to the largest remainder (class 0, before 2)
    assert np.bincount(labels[idx], minlength=3).tolist() == [4, 1, 0]
    assert np.array_equal(idx, stratified_sample(labels, 5, 3))
    many = np.repeat([0, 1], 50)
    assert not np.array_equal(stratified_sample(many, 20, 3), stratified_sample(many, 20, 4))
    assert np.array_equal(stratified_sample(labels, 50, 0), np.arange(10))


def test_svc_features_against_hand_computed_values():
    p = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    logits = np.log(np.array([[0.7, 0.2, 0.1], [1.0, 1e-300, 1e-300]]))
    labels = np.array([0, 1])
    ln = math.log
    assert svc_feature("confidence", logits, labels)[0] == pytest.approx(0.7)
    assert entropy(p)[0] == pytest.approx(-(0.7 * ln(0.7) + 0.2 * ln(0.2) + 0.1 * ln(0.1)))
    assert entropy(p)[1] == 0.0  # 0 log 0 = 0
    # Song & Mittal: -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)
    assert modified_entropy(p, labels)[0] == pytest.approx(-(0.3 * ln(0.7)) - (0.2 * ln(0.8) + 0.1 * ln(0.9)))
    # label 1 has p_y = 0 and p_0 = 1: both logs clamp at log(1e-30)
    assert modified_entropy(p, labels)[1] == pytest.approx(2 * 30 * ln(10))
    assert svc_feature("m_entropy", logits[:1], labels[:1])[0] == pytest.approx(modified_entropy(p, labels)[0])
    assert svc_feature("entropy", logits[:1], labels[:1])[0] == pytest.approx(entropy(p)[0])
    with pytest.raises(ValueError):
        svc_feature("correctness", logits, labels)


@pytest.mark.parametrize("feature", ["confidence", "entropy", "m_entropy"])
def test_each_svc_attack_calls_unseen_looking_forget_data_non_member(feature):
    """Members: confident and correct; non-members: unsure. A forget set that looks unsure gets a high
    efficacy, one that looks like members a low one, whichever feature the attack uses."""
    rng = np.random.default_rng(2)

    def logits_with_confidence(conf, n):
        p_true = np.clip(rng.normal(conf, 0.03, n), 0.05, 0.999)
        rest = (1 - p_true)[:, None] * np.full((n, 9), 1 / 9)
        return np.log(np.concatenate([p_true[:, None], rest], axis=1)), np.zeros(n, int)

    members, m_y = logits_with_confidence(0.98, 400)
    test, t_y = logits_with_confidence(0.4, 300)
    seen, s_y = logits_with_confidence(0.98, 50)
    unseen, u_y = logits_with_confidence(0.4, 50)
    f = lambda z, y: svc_feature(feature, z, y)  # noqa: E731
    high = mia_svc(f(members, m_y), f(test, t_y), f(unseen, u_y))
    low = mia_svc(f(members, m_y), f(test, t_y), f(seen, s_y))
    assert high.efficacy > 90 and low.efficacy < 10 and not high.degenerate()


def test_unlearning_metrics_has_every_attack():
    rng = np.random.default_rng(0)
    logits = {k: rng.normal(size=(n, 4)) for k, n in (("retain", 80), ("forget", 20), ("test_retain", 40))}
    labels = {k: rng.integers(0, 4, len(v)) for k, v in logits.items()}
    m = unlearning_metrics(logits, labels)
    for attack in ("loss_logreg", "confidence_svc", "entropy_svc", "m_entropy_svc"):
        assert 0 <= m[f"MIA_{attack}"] <= 100 and f"attack_degenerate_{attack}" in m


def test_tow_against_hand_computed_values():
    assert tug_of_war(10, 90, 80, 0, 100, 80) == pytest.approx(0.9 * 0.9 * 1.0)
    assert tug_of_war(50, 50, 50, 50, 50, 50) == 1.0
    assert tug_of_war(100, 90, 80, 0, 90, 80) == 0.0
    rows = [{"paradigm": "retrain", "epochs": 5, "UA": 100.0, "MIA_confidence_svc": 100.0, "RA": 99.0, "TA": 90.0},
            {"paradigm": "lora", "epochs": 5, "UA": 80.0, "MIA_confidence_svc": 90.0, "RA": 97.0, "TA": 88.0}]
    add_avg_gap(rows)
    assert rows[0]["tow"] == 1.0 and rows[0]["avg_gap"] == 0.0
    assert rows[1]["tow"] == pytest.approx((1 - 0.20) * (1 - 0.02) * (1 - 0.02))
    assert rows[1]["avg_gap"] == pytest.approx((20 + 10 + 2 + 2) / 4)


def test_degenerate_attack_is_visible():
    same = np.full(100, 0.5)
    res = mia_loss_logreg(same, same.copy(), same[:10], 0.5, 0.5)
    assert res.degenerate() and res.attack_accuracy == pytest.approx(50.0)


def test_unlearning_metrics_bundle():
    rng = np.random.default_rng(2)
    logits = {"retain": np.eye(3)[rng.integers(0, 2, 50)] * 8, "forget": np.tile([[0.0, 5.0, 0.0]], (10, 1)),
              "test_retain": rng.normal(size=(40, 3))}
    labels = {"retain": np.argmax(logits["retain"], 1), "forget": np.full(10, 2),
              "test_retain": rng.integers(0, 2, 40)}
    m = unlearning_metrics(logits, labels)
    assert m["UA"] == 100.0 and m["RA"] == 100.0
    assert m["TA"] == pytest.approx(accuracy_pct(logits["test_retain"], labels["test_retain"]))
    assert m["MIA_loss_logreg"] == 100.0  # forget losses are huge: every forget sample looks unseen
    assert not m["attack_degenerate_loss_logreg"]  # ... and the attack that says so separates its shadow data
    assert m["attack_acc_loss_logreg"] > 60
    assert set(m) >= {"MIA_confidence_svc", "attack_acc_loss_logreg", "attack_acc_confidence_svc"}


def test_attack_sizes_keep_the_reference_balance_on_subsets():
    assert attack_sizes(45_000, 9_000) == (9000, 5000)  # full CIFAR-10: the reference's draw
    assert attack_sizes(900, 1_800) == (900, 500)  # cpu preset: 9:5, not 180 vs 1,000
    assert attack_sizes(100_000, 100_000) == (9000, 5000)  # never more than the reference draws
    m, n = attack_sizes(300, 90)
    assert n == 90 and m == 162


def test_degenerate_attack_is_judged_against_the_majority_class():
    rng = np.random.default_rng(0)
    same = rng.exponential(1.0, 2000)  # members and non-members indistinguishable
    res = mia_loss_logreg(same[:900], same[900:1400], same[1400:], members=9000, nonmembers=5000)
    assert res.majority_pct() == pytest.approx(100 * 9 / 14, abs=0.1)
    assert res.degenerate()
    sep = mia_loss_logreg(rng.exponential(0.01, 900), rng.exponential(2.0, 500), same[:10])
    assert not sep.degenerate() and sep.attack_accuracy > 90
