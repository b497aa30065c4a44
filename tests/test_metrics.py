import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from prunelora_keras.metrics import (accuracy_pct, attack_sizes, cross_entropy, mia_confidence_svc, mia_loss_logreg,
                                     true_class_probability, unlearning_accuracy, unlearning_metrics)


def test_accuracies_on_known_inputs():
    logits = np.array([[3.0, 1.0], [0.0, 2.0], [5.0, -1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    assert accuracy_pct(logits, labels) == 50.0
    assert unlearning_accuracy(logits, labels) == 50.0
    assert unlearning_accuracy(logits[:1], labels[:1]) == 0.0


def test_true_class_probability_is_softmax():
    logits = np.array([[1.0, 2.0, 3.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    assert true_class_probability(logits, np.array([1]))[0] == pytest.approx(p[0, 1])
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
    res = mia_confidence_svc(retain, test, forget)
    assert (res.n_members, res.n_nonmembers) == (300, 300)  # the first |test| retain samples
    x = np.r_[retain[:300], test][:, None]
    y = np.r_[np.ones(300), np.zeros(300)]
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    assert res.efficacy == pytest.approx(100 * (1 - clf.predict(forget[:, None]).mean()))
    assert res.efficacy == pytest.approx(60.0)


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
