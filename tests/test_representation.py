"""The representation metrics: linear CKA against an independent HSIC computation, the linear probe
on separable and on noise features, and the probe's data selection."""

import numpy as np
import pytest

from prunelora_keras.evaluation.representation import (balanced_fit_set, linear_cka, probe_accuracy, probe_forget_acc,
    split_halves)


def cka_by_hsic(x, y):
    """Kornblith et al.'s definition written independently: HSIC of linear Gram matrices with the
    centring matrix H, CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_matches_the_hsic_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7)) + 3.0  # uncentred on purpose
    y = x @ rng.normal(size=(7, 5)) + 0.5 * rng.normal(size=(60, 5))
    assert linear_cka(x, y) == pytest.approx(cka_by_hsic(x, y), rel=1e-10)
    z = rng.normal(size=(60, 9))
    assert linear_cka(x, z) == pytest.approx(cka_by_hsic(x, z), rel=1e-10)


def test_linear_cka_invariances_and_range():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 2.5 * x @ q + 4.0) == pytest.approx(1.0)  # rotation, isotropic scale, shift
    noise = linear_cka(x, rng.normal(size=(200, 6)))
    assert 0.0 <= noise < 0.15  # unrelated features align little
    assert np.isnan(linear_cka(x, np.ones((200, 3))))  # no variance: undefined, not 0 or 1
    with pytest.raises(ValueError):
        linear_cka(x, x[:10])


def test_probe_reaches_100_on_separable_features_and_chance_on_noise():
    rng = np.random.default_rng(2)
    classes, per = 10, 40
    y = np.repeat(np.arange(classes), per)
    centres = np.eye(classes, 16) * 8.0
    separable = centres[y] + rng.normal(size=(len(y), 16))
    fit, score = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    assert probe_accuracy(separable[fit], y[fit], separable[score], y[score]) == 100.0
    noise = rng.normal(size=(len(y), 16))
    chance = probe_accuracy(noise[fit], y[fit], noise[score], y[score])
    assert chance < 25.0  # 10 classes: chance is 10%


def test_probe_forget_acc_tells_held_features_from_erased_ones():
    rng = np.random.default_rng(3)
    retain_y = np.repeat(np.arange(9), 30)
    centres = np.eye(10, 12) * 6.0
    retain_x = centres[retain_y] + rng.normal(size=(len(retain_y), 12))
    forget_y = np.full(40, 9)
    kept = centres[forget_y] + rng.normal(size=(40, 12))  # the class still has its own direction
    erased = centres[rng.integers(0, 9, 40)] + rng.normal(size=(40, 12))  # mapped onto other classes
    assert probe_forget_acc(retain_x, retain_y, kept, forget_y) == 100.0
    assert probe_forget_acc(retain_x, retain_y, erased, forget_y) < 30.0
    assert np.isnan(probe_forget_acc(retain_x, retain_y, kept[:1], forget_y[:1]))


def test_probe_data_selection():
    first, second = split_halves(11, 0)
    assert len(first) == 6 and len(second) == 5 and not set(first) & set(second)
    assert sorted(np.r_[first, second].tolist()) == list(range(11))
    pool_y = np.repeat([0, 1, 2], [50, 3, 50])
    pool_x = np.arange(len(pool_y))[:, None].astype(float)
    must_y = np.full(20, 3)
    must_x = -np.arange(1, 21)[:, None].astype(float)
    x, y = balanced_fit_set(pool_x, pool_y, must_x, must_y, seed=0)
    counts = np.bincount(y)
    assert counts.tolist() == [20, 3, 20, 20]  # balanced at |must|; class 1 keeps the 3 it has
    assert set(x[y == 3, 0]) == set(must_x[:, 0])  # every forced item is in
