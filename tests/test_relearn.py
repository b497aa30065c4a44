"""Relearn time: the plan, the step count through the compiled step, the cap, and that the model
under test is never changed."""

import keras
import numpy as np
import pytest

from prunelora_keras.data.datasets import Subset
from prunelora_keras.evaluation.relearn import relearn_plan, relearn_steps
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.inference import accuracy, predict_logits
import optax
from prunelora_keras.data.augment import Preprocess

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(labels, rng):
    """4x4 images whose class is the brightest of 4 pixel positions (linearly separable)."""
    x = rng.integers(0, 60, (len(labels), 4, 4, 3))
    for i, c in enumerate(labels):
        x[i, c // 2, (c % 2) * 2] = 255
    return x.astype(np.uint8)


def _data():
    rng = np.random.default_rng(0)
    retain_y = np.repeat(np.arange(3), 40)
    forget_y = np.full(40, 3)
    return Subset(_images(retain_y, rng), retain_y), Subset(_images(forget_y, rng), forget_y)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def test_plan_splits_the_forget_set_once_and_for_all():
    retain, forget = _data()
    plan = relearn_plan(retain, forget, 0.1, seed=0)
    assert plan.n_forget_in_stream == 4 and len(plan.heldout) == 36
    assert len(plan.stream) == len(retain) + 4 and np.sum(plan.stream.y == 3) == 4
    again = relearn_plan(retain, forget, 0.1, seed=0)
    assert np.array_equal(again.heldout.x, plan.heldout.x)  # the same plan for every model
    in_stream = {x.tobytes() for x in plan.stream.x[plan.stream.y == 3]}
    assert not in_stream & {x.tobytes() for x in plan.heldout.x}  # never measured on what it trains on
    with pytest.raises(ValueError):
        relearn_plan(retain, Subset(forget.x[:1], forget.y[:1]))


def test_forget_share_repeats_the_sample_to_that_share_of_the_stream():
    retain, forget = _data()  # 120 retained, 40 forget images
    plan = relearn_plan(retain, forget, 0.1, seed=0, forget_share=0.5)
    once = relearn_plan(retain, forget, 0.1, seed=0)
    # the same 4 images of D_f, each repeated round(0.5 * 120 / (0.5 * 4)) = 30 times: half the stream
    assert plan.n_forget_in_stream == 4 and len(plan.stream) == 120 + 4 * 30
    assert np.sum(plan.stream.y == 3) / len(plan.stream) == 0.5
    assert {x.tobytes() for x in plan.stream.x[plan.stream.y == 3]} == {x.tobytes() for x in once.stream.x[once.stream.y == 3]}
    assert np.array_equal(plan.heldout.x, once.heldout.x)  # the share changes the stream, not what is measured
    assert np.array_equal(plan.stream.x[:120], retain.x)
    # a share below what one copy already gives: the sample still joins once
    assert len(relearn_plan(retain, forget, 0.5, seed=0, forget_share=0.01).stream) == 120 + 20
    with pytest.raises(ValueError, match=r"forget_share must be in \[0, 1\)"):
        relearn_plan(retain, forget, 0.1, forget_share=1.0)


def test_relearn_counts_steps_until_the_target_and_leaves_the_model_alone():
    retain, forget = _data()
    plan = relearn_plan(retain, forget, 0.25, seed=0)
    # a model that knows classes 0-2 and has "forgotten" class 3 (its row never trained)
    model = _model()
    rows = np.isin(plan.stream.y, [0, 1, 2])
    Trainer(model, optax.adam(0.05), num_classes=4, preprocess=Preprocess(MEAN, STD)).fit(plan.stream.x[rows], plan.stream.y[rows], 5, 16)
    before = [w.copy() for w in model.get_weights()]
    start = 100 * accuracy(predict_logits(model, plan.heldout.x, Preprocess(MEAN, STD)), plan.heldout.y)
    assert start < 10
    kwargs = dict(lr=0.05, batch_size=16, eval_every=2, seed=0)
    res = relearn_steps(model, plan, 90.0, 4, Preprocess(MEAN, STD), max_steps=200, **kwargs)
    assert not res["relearn_capped"] and 0 < res["relearn_steps"] < 200 and res["relearn_final_acc"] >= 90.0
    assert res["relearn_steps"] % 2 == 0  # checked every eval_every steps
    curve = res["relearn_curve"]  # every check from step 0, the last one the count
    assert [s for s, _ in curve] == list(range(0, res["relearn_steps"] + 1, 2))
    assert curve[-1][1] == pytest.approx(res["relearn_final_acc"], abs=0.01) and curve[-1][1] >= 90.0
    assert res["relearn_peak_acc"] == max(a for _, a in curve) and curve[0][1] < 90.0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the count is the first check at or above the target: capped just before it, the target is not reached
    short = relearn_steps(model, plan, 90.0, 4, Preprocess(MEAN, STD), max_steps=res["relearn_steps"] - 2, **kwargs)
    assert short["relearn_capped"] and short["relearn_final_acc"] < 90.0
    assert short["relearn_steps"] == res["relearn_steps"] - 2
    # already there: zero steps; out of reach: the cap, marked
    assert relearn_steps(model, plan, 0.0, 4, Preprocess(MEAN, STD), max_steps=50, **kwargs)["relearn_steps"] == 0
    capped = relearn_steps(model, plan, 101.0, 4, Preprocess(MEAN, STD), max_steps=6, **kwargs)
    assert capped == {**capped, "relearn_steps": 6, "relearn_capped": True}


def test_on_step_end_stops_the_trainer_exactly_there():
    retain, _ = _data()
    model = _model()
    trainer = Trainer(model, optax.sgd(0.01), num_classes=4, preprocess=Preprocess(MEAN, STD), verbose=False)
    seen = []
    history = trainer.fit(retain.x, retain.y, 5, 16, on_step_end=lambda s: seen.append(s) or s == 11)
    assert seen == list(range(1, 12)) and trainer.global_step == 11
    assert len(history) == 2  # one full epoch of 8 steps and the 3 steps of the second


def test_syncing_mid_fit_never_hands_the_model_a_donated_buffer():
    """The step donates the trainer's buffers; a sync in the middle of training (epoch-end callbacks,
    continual unlearning's saves) must leave the model with arrays of its own."""
    retain, _ = _data()
    model = _model()
    trainer = Trainer(model, optax.adam(0.01), num_classes=4, preprocess=Preprocess(MEAN, STD), verbose=False)
    seen, held = [], []

    def read_weights(stats):
        seen.append([np.asarray(w).copy() for w in model.get_weights()])  # the synced values, readable
        held.append([v.value for v in model.variables])  # what the model holds until the next sync

    trainer.fit(retain.x, retain.y, 3, 16, on_epoch_end=read_weights)
    assert len(seen) == 3 and not np.array_equal(seen[0][0], seen[2][0])
    for arrays in held:  # later steps donated the trainer's buffers: none of them may be the model's
        for a in arrays:
            assert not a.is_deleted()
            np.testing.assert_array_equal(np.asarray(a), np.asarray(a))
    for w in model.get_weights():  # still readable after later steps donated the trainer's buffers
        assert np.all(np.isfinite(w))
    trainer.fit(retain.x, retain.y, 1, 16, first_epoch=4)
    assert all(np.all(np.isfinite(np.asarray(v.value))) for v in model.variables)


def test_the_command_measures_relearn_at_the_largest_epoch_count_only(tmp_path):
    """The relearn fine-tune costs more than the rest of an evaluation; the report shows it at each
    method's largest epoch count, so the smaller counts' rows must not pay for it."""
    import json

    from prunelora_keras.experiment.run import main

    out = tmp_path / "run"
    assert main(["--model", "vit", "--preset", "quick", "--paradigms", "retrain,finetune", "--epochs", "1,2",
                 "--set", "pretrain.epochs=1", "--set", "model.depth=1", "--set", "model.dim=16",
                 "--set", "model.mlp_dim=16", "--set", "eval.relearn_max_steps=2", "--out", str(out)]) == 0
    rows = {(r["paradigm"], r["epochs"]): r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert "relearn_steps" not in rows[("finetune", 1)] and "probe_forget_acc" in rows[("finetune", 1)]
    assert rows[("finetune", 2)]["relearn_steps"] >= 0 and "relearn_capped" in rows[("finetune", 2)]
    assert all("relearn_steps" in rows[("retrain", e)] for e in (1, 2))  # one model, one evaluation


def test_an_evaluation_says_each_stage_and_the_relearn_tests_steps(monkeypatch):
    """Issue 39: 70-100 s of silence after each paradigm's last epoch read as a hang."""
    from prunelora_keras.evaluation import relearn as relearn_module
    from prunelora_keras.evaluation.evaluate import Reference, evaluate_arrays

    monkeypatch.setattr(relearn_module, "PROGRESS_EVERY_S", 0.0)  # a line at every check
    retain, forget = _data()
    plan = relearn_plan(retain, forget, 0.25, seed=0)
    sets = {"retain": retain, "forget": forget, "test_retain": retain}
    lines = []
    evaluate_arrays(_model(), sets, 4, Preprocess(MEAN, STD), members=40, nonmembers=40, progress=lines.append,
                    reference=Reference(relearn=plan, relearn_target=101.0),
                    relearn={"lr": 0.05, "batch_size": 16, "max_steps": 4, "eval_every": 2})
    stages = [line.split(":")[0] for line in lines if line.startswith("evaluating")]
    assert stages == ["evaluating 1/4", "evaluating 2/4", "evaluating 3/4", "evaluating 4/4"], lines
    assert "forward passes over 280 images" in lines[0] and "relearn test (fine-tuning a copy, up to 4 steps)" in lines[3]
    steps = [line for line in lines if line.startswith("relearn test: step")]
    assert [s.split(",")[0] for s in steps] == ["relearn test: step 2/4", "relearn test: step 4/4"], lines
    assert "left" in steps[0]
    quiet = []
    evaluate_arrays(_model(), sets, 4, Preprocess(MEAN, STD), members=40, nonmembers=40, progress=quiet.append)
    assert len(quiet) == 3  # no relearn test, no fourth stage


def test_the_runs_pace_names_each_method_and_the_time_the_rest_should_take(monkeypatch):
    from prunelora_keras.experiment import terminal

    clock = iter([0.0, 0.5, 100.5, 300.5])  # the first method reused (0.5 s), the second took 100 s
    monkeypatch.setattr(terminal.time, "perf_counter", lambda: next(clock))
    pace, lines = terminal.Pace(["a", "b", "c", "d"]), []
    for name in "abcd":
        pace.next(name, lines.append)
    assert lines[0] == "--- a: method 1/4 ---" and lines[1] == "--- b: method 2/4 ---"  # a reused: no pace yet
    assert lines[2].startswith("--- c: method 3/4; about 3m20s left for the 2 methods to go")
    assert "about 2m30s left for the 1 method to go" in lines[3]  # the mean of 100 s and 200 s, once


def test_relearn_time_is_measured_for_class_wise_forgetting_only():
    """Forgetting samples of classes D_r keeps, a model that generalises is at the target already and only a
    damaged one needs steps: the count would rank backwards, so it is not measured, and the output says so."""
    import prunelora_keras as plk
    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.experiment.context import make_reference
    from prunelora_keras.experiment.pipeline import load_data

    retain, forget = _data()
    model = _model()
    Trainer(model, optax.adam(0.05), num_classes=4, preprocess=Preprocess(MEAN, STD), verbose=False).fit(
        np.concatenate([retain.x, forget.x]), np.concatenate([retain.y, forget.y]), 5, 16)
    x_r, y_r, x_f, y_f = retain.x / 255.0, retain.y, forget.x / 255.0, forget.y
    kwargs = dict(test=(x_r[:20], y_r[:20]), original=model, relearn_max_steps=4)
    classwise = plk.evaluate(model, (x_r, y_r), (x_f, y_f), **kwargs)
    assert "relearn_steps" in classwise and not any("relearn" in n for n in classwise["notes"])
    samples = plk.evaluate(model, (x_r[10:], y_r[10:]), (x_r[:10], y_r[:10]), **kwargs)  # D_f of kept classes
    assert "relearn_steps" not in samples and any("relearn time not measured" in n for n in samples["notes"])
    cfg = build_config("resnet18", "quick", None, {}, ["data.train_size=300", "data.forget_fraction=0.1"])
    ds, split = load_data(cfg)
    assert not split.forget_classes and make_reference(None, split, ds, cfg).relearn is None  # the model unread
