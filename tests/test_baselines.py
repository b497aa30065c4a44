"""The baselines' defining behaviours, random-sample forgetting and Avg. Gap, on tiny data."""

import copy
import dataclasses
import json

import keras
import numpy as np
import optax
import pytest

from prunelora_keras.data.augment import Preprocess
from prunelora_keras import methods
from prunelora_keras.methods import common
from prunelora_keras.experiment.context import config_context
from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.datasets import make_split, random_forget_mask
from prunelora_keras.evaluation.metrics import add_avg_gap, cross_entropy
from prunelora_keras.experiment.pipeline import load_data
from prunelora_keras.experiment.run import main
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.inference import predict_logits


CONFIG_SETS = ["data.train_size=300", "unlearn.batch_size=32"]


@pytest.fixture(scope="module")
def trained_once():
    """A small CNN fitted to digits (300 images), the data set and its class-wise split (once per module)."""
    cfg = build_config("resnet18", "quick", None, {}, CONFIG_SETS)
    ds, split = load_data(cfg)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(ds.image_shape)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(ds.num_classes, name="head")(h))
    Trainer(model, optax.adam(1e-2), num_classes=ds.num_classes, preprocess=ds.preprocess).fit(split.train.x, split.train.y, 15, 32)
    return cfg, ds, split, [np.asarray(v) for v in model.get_weights()], model


@pytest.fixture
def trained(trained_once):
    """``trained_once`` with a copy of its options per test: a test sets options freely (``_run``'s
    overrides), and no other test sees them, whatever order the tests run in. (The model is shared;
    ``_fresh`` restores its fitted weights.)"""
    cfg, ds, split, weights, model = trained_once
    return copy.deepcopy(cfg), ds, split, weights, model


def _fresh(trained):
    cfg, ds, split, weights, model = trained
    model.set_weights(weights)
    return model


def _forget_loss(model, trained):
    cfg, ds, split, _, _ = trained
    return float(cross_entropy(predict_logits(model, split.forget.x, ds.preprocess), split.forget.y).mean())


def _plan(name, model, cfg, split, ds):
    """The registry's plan of baseline ``name`` for ``model`` under ``cfg``."""
    return methods.get(name).prepare(config_context(cfg, name, model, ds, split))


def _run(name, trained, epochs=2, **overrides):
    cfg, ds, split, _, _ = trained
    cfg.methods[name] = dataclasses.replace(cfg.methods[name], **overrides)  # this test's copy only
    model = _fresh(trained)
    plan = _plan(name, model, cfg, split, ds)
    trainer = Trainer(model, plan.optimizer, num_classes=ds.num_classes, preprocess=ds.preprocess, seed=0)
    trainer.fit(plan.x, plan.y, epochs, 32, labels_for_epoch=plan.labels_for_epoch, stream=plan.stream)
    return model, plan


def test_ga_ascends_the_forget_loss_on_d_f_only(trained):
    before = _forget_loss(_fresh(trained), trained)
    model, plan = _run("ga", trained, epochs=10, lr=0.1)  # one step per epoch on ~30 images
    assert len(plan.y) == len(trained[2].forget) and set(plan.y) == {trained[2].forget_class}
    assert _forget_loss(model, trained) > max(10 * before, before + 0.1)


def test_rl_relabels_every_forget_image_and_changes_its_predictions(trained):
    cfg, ds, split, _, _ = trained
    relabelled = common.random_other_labels(split.forget.y, ds.num_classes, seed=0)
    assert np.all(relabelled != split.forget.y) and len(set(relabelled)) > 3
    np.testing.assert_array_equal(relabelled, common.random_other_labels(split.forget.y, ds.num_classes, seed=0))
    right_before = np.mean(np.argmax(predict_logits(_fresh(trained), split.forget.x, ds.preprocess), 1) == split.forget.y)
    model, plan = _run("rl", trained, epochs=3, lr=0.05)
    assert len(plan.y) == len(split.retain) + len(split.forget)
    right_after = np.mean(np.argmax(predict_logits(model, split.forget.x, ds.preprocess), 1) == split.forget.y)
    assert right_before > 0.8 and right_after < right_before - 0.3


def test_salun_moves_only_the_salient_weights(trained):
    before = [np.asarray(v) for v in _fresh(trained).trainable_variables]
    model = _fresh(trained)
    cfg, ds, split, _, _ = trained
    masks = common.saliency_masks(model, model.trainable_variables, split.forget.x, split.forget.y, ds.preprocess, 0.3, 64)
    total = sum(m.size for m in masks)
    assert sum(m.sum() for m in masks) == pytest.approx(0.3 * total, abs=2)
    model, _ = _run("salun", trained, ratio=0.3, lr=0.05)
    moved = 0
    for b, v, m in zip(before, model.trainable_variables, masks):
        v = np.asarray(v)
        np.testing.assert_array_equal(v[m == 0], b[m == 0])  # frozen: not even weight decay moves them
        moved += int(np.sum(v[m == 1] != b[m == 1]))
    assert moved > 0.5 * sum(m.sum() for m in masks)


def test_l1_penalty_decays_linearly_over_the_epochs(trained):
    transform = common.decaying_l1(0.1, steps_per_epoch=2, epochs=4)
    params = [np.array([2.0, -3.0, 0.0], np.float32)]
    state = transform.init(params)
    seen = []
    for _ in range(8):
        updates, state = transform.update([np.zeros(3, np.float32)], state, params)
        seen.append(np.asarray(updates[0]))
    for step, u in enumerate(seen):
        coef = 0.1 * (1 - (step // 2) / 4)
        np.testing.assert_allclose(u, coef * np.array([1.0, -1.0, 0.0]), rtol=1e-6)
    model, _ = _run("l1_sparse", trained, epochs=1, alpha=1e-2)  # a penalty that visibly shrinks weights
    assert np.abs(np.asarray(model.get_layer("head").kernel)).sum() < np.abs(trained[3][2]).sum()


def test_random_forgetting_keeps_every_class_in_the_retain_set():
    cfg = build_config("vit", "quick", None, {}, [])
    ds, _ = load_data(cfg)
    split = make_split(ds, 3, 300, 0, seed=0, forget_fraction=0.1)
    assert split.forget_class == -1 and len(split.test_forget) == 0 and len(split.test_retain) == len(split.test)
    assert set(split.retain.y) == set(range(ds.num_classes)) and len(set(split.forget.y)) == ds.num_classes
    assert len(split.forget) == pytest.approx(30, abs=ds.num_classes)
    assert len(split.retain) + len(split.forget) == len(split.train)
    y = np.repeat(np.arange(3), [1, 5, 50])  # a class of one image is never forgotten whole
    mask = random_forget_mask(y, 0.5, seed=1)
    assert not mask[0] and mask[1:6].sum() == 2 and mask[6:].sum() == 25
    np.testing.assert_array_equal(mask, random_forget_mask(y, 0.5, seed=1))
    assert not np.array_equal(mask, random_forget_mask(y, 0.5, seed=2))


def test_avg_gap_is_the_mean_absolute_distance_to_retrain():
    rows = [{"paradigm": "retrain", "epochs": 5, "UA": 100.0, "MIA_confidence_svc": 100.0, "RA": 90.0, "TA": 80.0},
            {"paradigm": "ga", "epochs": 5, "UA": 90.0, "MIA_confidence_svc": 96.0, "RA": 70.0, "TA": 78.0},
            {"paradigm": "rl", "epochs": 5, "status": "non-finite loss"}]
    add_avg_gap(rows)
    assert rows[0]["avg_gap"] == 0.0 and rows[1]["avg_gap"] == pytest.approx((10 + 4 + 20 + 2) / 4)
    assert "avg_gap" not in rows[2]


@pytest.mark.slow
def test_every_baseline_runs_in_the_experiment_with_random_forgetting(capsys, tmp_path):
    args = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=2", "--set", "model.dim=16",
            "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=16",
            "--set", "data.train_size=300", "--paradigms",
            "retrain,lora,ga,rl,l1_sparse,salun,neggrad_plus,scrub,ssd,bad_teacher,msg",
            "--epochs", "1", "--forget-fraction", "0.1", "--set", "lora.l1=1e-4", "--out", str(tmp_path / "r")]
    assert main(args) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    rows = {r["paradigm"]: r for r in results["rows"]}
    assert set(rows) == {"retrain", "lora", "ga", "rl", "l1_sparse", "salun", "neggrad_plus", "scrub", "ssd",
                         "bad_teacher", "msg"}
    assert all(r["status"] == "ok" and "avg_gap" in r for r in rows.values())
    assert rows["ssd"]["prepare_s"] > 0 and rows["ssd"]["rte_s"] < 0.01  # SSD's cost is its importance passes
    assert results["data"]["forget_class"] == -1 and "random 10%" in results["data"]["forgetting"]
    table = (tmp_path / "r" / "results.md").read_text()
    assert "Avg. Gap 1ep" in table and "| SalUn |" in table and "| l1-sparse |" in table
    assert "| NegGrad+ |" in table and "| SCRUB |" in table and "| Bad Teacher |" in table and "| MSG |" in table


@pytest.mark.slow
def test_continual_unlearning_applies_requests_one_after_another(capsys, tmp_path):
    out = tmp_path / "c"
    args = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=2", "--set", "model.dim=16",
            "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=16",
            "--set", "data.train_size=300", "--paradigms", "retrain,finetune,lora", "--epochs", "1,2",
            "--forget-class", "3,5", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert [r["forgotten"] for r in results["requests"]] == [[3], [3, 5]]
    # every epoch syncs the trained weights into the model mid-fit and each request saves it: training goes on
    # with finite losses (a donated buffer in the model read as deleted, or NaN, from epoch 2 on)
    assert all(r["status"] == "ok" for r in results["rows"]), [r["status"] for r in results["rows"]]
    second = {r["paradigm"]: r for r in results["rows"] if r["request"] == 2 and r["epochs"] == 2}
    assert set(second) == {"retrain", "finetune", "lora"} and all("avg_gap" in r for r in second.values())
    assert results["stages"]["retrain_request2"]["accuracies"]["forget"] == 0.0  # never saw 3 or 5
    # the second request starts from each paradigm's model after the first
    assert (out / "continual" / "request1" / "finetune.keras").is_file()
    table = (out / "results.md").read_text()
    assert "After request 1 (forgotten so far: classes 3)" in table and "classes 3, 5" in table
    assert (out / "request2" / "results.md").is_file()
    code = main(args[:-4] + ["--forget-class", "3,3", "--out", str(tmp_path / "bad")])
    assert code == 2 and "distinct classes" in capsys.readouterr().err


def test_rl_labels_per_batch_from_all_classes_and_once_other(trained):
    cfg, ds, split, _, _ = trained
    model = _fresh(trained)
    cfg.methods["rl"] = dataclasses.replace(cfg.methods["rl"], labels="per_batch", order="mixed")
    plan = _plan("rl", model, cfg, split, ds)
    n_r = len(split.retain)
    e1, e2 = plan.labels_for_epoch(1), plan.labels_for_epoch(2)
    np.testing.assert_array_equal(e1[:n_r], split.retain.y)  # D_r keeps its labels
    assert not np.array_equal(e1[n_r:], e2[n_r:])  # fresh labels every epoch
    draws = np.concatenate([plan.labels_for_epoch(e)[n_r:] for e in range(1, 41)])
    assert set(draws) == set(range(ds.num_classes))  # from all classes, the true one included
    assert np.mean(draws == split.forget_class) == pytest.approx(1 / ds.num_classes, abs=0.03)
    np.testing.assert_array_equal(e1, plan.labels_for_epoch(1))  # a function of the epoch: resumable
    cfg.methods["rl"] = dataclasses.replace(cfg.methods["rl"], labels="once_other")
    once = _plan("rl", model, cfg, split, ds)
    assert once.labels_for_epoch is None and np.all(once.y[n_r:] != split.forget.y)


@pytest.mark.parametrize("name", ["rl", "salun"])
def test_rl_and_salun_default_to_their_cifar10_epoch_every_forget_batch_then_every_retain_batch(trained, name):
    cfg, ds, split, _, _ = trained
    plan = _plan(name, _fresh(trained), cfg, split, ds)
    assert cfg.methods[name].order == "forget_first" and plan.x is None
    stream, n_r, n_f = plan.stream, len(split.retain), len(split.forget)
    for epoch in (1, 2):
        parts = [b["train"] for b in stream(epoch, np.random.default_rng(epoch))]
        assert len(parts) == stream.steps_per_epoch == -(-n_f // 32) + -(-n_r // 32)
        rows = np.concatenate([np.asarray(x.index) for x, _ in parts])
        n_forget_batches = -(-n_f // 32)
        assert (rows[:n_f] >= n_r).all() and (rows[n_f:] < n_r).all()  # D_f's batches come first
        assert sorted(rows) == list(range(n_r + n_f))  # each image once an epoch
        assert all(len(y) <= 32 for _, y in parts) and len(parts[n_forget_batches - 1][1]) == n_f - 32 * (n_forget_batches - 1)
        labels = np.concatenate([y for _, y in parts])
        want = stream.labels_for_epoch(epoch)[rows]
        np.testing.assert_array_equal(labels, want)  # the epoch's labels, D_r's its own
        np.testing.assert_array_equal(labels[n_f:], np.concatenate([split.retain.y, split.forget.y])[rows[n_f:]])
        x_rows = np.concatenate([np.asarray(x) for x, _ in parts])
        np.testing.assert_array_equal(x_rows, np.concatenate([split.retain.x, split.forget.x])[rows])
    assert not np.array_equal(stream.labels_for_epoch(1)[n_r:], stream.labels_for_epoch(2)[n_r:])


def test_salun_selects_exactly_the_ratio_even_with_ties():
    """Gradient magnitudes that tie at the threshold must not let more than round(ratio x n) weights move."""
    inputs = keras.Input((2, 2, 1))
    h = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False, kernel_initializer="zeros", name="head")(h))
    # zero weights: every input pixel's gradient is the same for both classes -> massive ties
    x = np.full((4, 2, 2, 1), 255, np.uint8)
    y = np.array([0, 0, 1, 1])

    pre = Preprocess((0.5,), (0.25,))

    for ratio in (0.25, 0.5, 0.6):
        masks = common.saliency_masks(model, model.trainable_variables, x, y, pre, ratio, 4)
        assert sum(m.sum() for m in masks) == round(ratio * 8), ratio
    first = common.saliency_masks(model, model.trainable_variables, x, y, pre, 0.25, 4)[0].ravel()
    assert first.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # ties: the earlier entries, deterministically


def test_l1_sparse_penalty_counts_steps_like_the_loop_with_drop_last(trained):
    """The plan's own optimiser, stepped as often as the loop steps: its l1 coefficient (read off the
    update of a weight of 1 with a zero gradient, no momentum, no decay) changes at the loop's epochs."""
    cfg, ds, split, _, _ = trained
    bs, epochs = cfg.unlearn.batch_size, max(cfg.unlearn.epochs)
    assert len(split.retain) % bs  # there is a partial batch to drop
    h = cfg.methods["l1_sparse"] = dataclasses.replace(cfg.methods["l1_sparse"], momentum=0.0, weight_decay=0.0,
                                                       alpha=1.0)  # this test's copy only
    for drop_last, steps in ((True, len(split.retain) // bs), (False, -(-len(split.retain) // bs))):
        cfg.data.drop_last = drop_last
        plan = _plan("l1_sparse", _fresh(trained), cfg, split, ds)
        params = [np.ones(1, np.float32)]
        state = plan.optimizer.init(params)
        coefs = []
        for _ in range(epochs * steps):  # every step the loop takes
            updates, state = plan.optimizer.update([np.zeros(1, np.float32)], state, params)
            coefs.append(-float(updates[0][0]) / h.lr)
        # each epoch's steps carry that epoch's coefficient 1 - e / E (e from 0)
        assert coefs[steps - 1] == pytest.approx(1.0), drop_last
        assert coefs[steps] == pytest.approx(1 - 1 / epochs), drop_last
        assert coefs[-1] == pytest.approx(1 / epochs), drop_last


def test_every_test_starts_from_the_presets_options(trained):
    """The fixture's options are a copy per test: what an earlier test set (ga.lr, rl.labels, drop_last,
    ...) never reaches a later one, so no test depends on the order the tests run in."""
    assert trained[0] == build_config("resnet18", "quick", None, {}, CONFIG_SETS)
    trained[0].methods["ga"] = dataclasses.replace(trained[0].methods["ga"], lr=123.0)  # reaches no other test


def test_a_later_test_does_not_see_that_change(trained):
    assert trained[0].methods["ga"].lr == build_config("resnet18", "quick", None, {}, CONFIG_SETS).methods["ga"].lr == 1e-4
