"""The models, layers and metrics on Keras's torch backend: same weights, same evaluation; the
experiment runs end to end through Keras's fit there."""

import json
import subprocess
import sys

import numpy as np
import pytest

from prunelora_keras.data.augment import Preprocess
from conftest import REPO, clean_env

TORCH_BACKEND = {"KERAS_BACKEND": "torch"}

EVALUATE = r"""
import json, sys
import prunelora_keras, keras
from prunelora_keras.experiment import pipeline
from prunelora_keras.experiment.config import build_config
cfg = build_config("resnet18", "quick", None, {}, ["model.width=0.125", "data.train_size=300"])
ds, split = pipeline.load_data(cfg)
model = keras.saving.load_model(sys.argv[1], compile=False, safe_mode=True)
from prunelora_keras.experiment.context import evaluate_model
from prunelora_keras.evaluation.features import predict_logits_and_features
metrics = evaluate_model(model, split, ds, cfg).metrics
logits, feats = predict_logits_and_features(model, split.forget.x, ds.preprocess)
print(json.dumps({"backend": keras.backend.backend(), **metrics, "logits": logits.tolist(), "features": feats.tolist()}))
"""


def test_same_weights_give_the_same_metrics_on_jax_and_torch(tmp_path):
    import keras

    from prunelora_keras.experiment import pipeline
    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.models import build_model
    from prunelora_keras.training.loop import Trainer
    from prunelora_keras.training.optim import make_optimizer

    cfg = build_config("resnet18", "quick", None, {}, ["model.width=0.125", "data.train_size=300"])
    ds, split = pipeline.load_data(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, ds.num_classes, ds.image_shape)
    Trainer(model, make_optimizer(cfg.pretrain, 10), num_classes=ds.num_classes, preprocess=ds.preprocess).fit(
        split.train.x, split.train.y, 2, 64)  # a trained model: predictions far from ties
    path = tmp_path / "model.keras"
    model.save(path)
    from prunelora_keras.experiment.context import evaluate_model

    jax_metrics = evaluate_model(model, split, ds, cfg).metrics
    proc = subprocess.run([sys.executable, "-c", EVALUATE, str(path)], env=clean_env() | TORCH_BACKEND, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch_metrics["backend"] == "torch"
    # the same function on both backends: logits and penultimate features agree to float32 rounding, far
    # tighter than any metric could show (a wrong layer on either backend fails here)
    from prunelora_keras.evaluation.features import predict_logits_and_features

    logits, feats = predict_logits_and_features(model, split.forget.x, ds.preprocess)
    np.testing.assert_allclose(np.asarray(torch_metrics["logits"]), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(torch_metrics["features"]), feats, rtol=1e-4, atol=1e-4)
    for m in ("UA", "RA", "TA"):  # one image at most may flip on float rounding
        assert torch_metrics[m] == pytest.approx(jax_metrics[m], abs=100 / len(split.forget) + 1e-9), m
    assert jax_metrics["RA"] > 20.0  # the comparison is of a model that learned something
    for m in ("MIA_loss_logreg", "MIA_confidence_svc"):
        assert torch_metrics[m] == pytest.approx(jax_metrics[m], abs=2.0), m
    for m in ("probe_forget_acc", "probe_forget_acc_test"):  # the features agree across backends too
        assert torch_metrics[m] == pytest.approx(jax_metrics[m], abs=2 * 100 / len(split.forget) + 1e-9), m


def _fit_trainer(seed=3):
    import keras

    from prunelora_keras.training.recipe import TrainConfig
    from prunelora_keras.training.fit_loop import FitTrainer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    return FitTrainer(model, TrainConfig(optimizer="adam", lr=1e-2), total_steps=20, num_classes=4, preprocess=Preprocess((0.5,) * 3, (0.25,) * 3), seed=seed,
                      verbose=False)


def _rows(n=50):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 2, 2, 3)).astype(np.uint8), rng.integers(0, 4, n)


def test_the_fit_loop_presents_every_example_once_per_epoch_in_the_compiled_loops_order():
    """Keras's fit (the torch backend's loop) sees the epoch's rows, normalised, with their own labels,
    in the order of the compiled loop's ``batches(x, y, bs, default_rng([seed, epoch]))``: it once
    indexed the images by their labels, and trained on ten images instead of the data set."""
    from prunelora_keras.data.batches import batches

    x, y = _rows()
    data = _fit_trainer()._epoch(x, y, 16, 2, False)
    expected = list(batches(x, y, 16, np.random.default_rng([3, 2])))
    assert len(data) == len(expected) == 4
    for i, (xb, yb) in enumerate(expected):
        images, targets = data[i]
        np.testing.assert_allclose(images, (xb / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)  # numpy, independently
        np.testing.assert_array_equal(targets, np.eye(4)[yb])


def test_the_fit_loops_on_step_end_stops_it_exactly_there():
    """Relearn time on the other backends counts steps through this callback, as on JAX."""
    x, y = _rows()
    trainer = _fit_trainer()
    seen = []
    history = trainer.fit(x, y, 5, 16, on_step_end=lambda s: seen.append(s) or s == 6)
    assert seen == list(range(1, 7)) and trainer.global_step == 6
    assert len(history) == 2  # one full epoch of 4 steps and the 2 steps of the second


def test_the_compiled_trainer_refuses_another_backend_with_the_fix(monkeypatch):
    """``train.Trainer`` is JAX's compiled step: on torch it failed reading a tensor that requires grad."""
    import keras

    from prunelora_keras.training.loop import Trainer

    model = _fit_trainer().model
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="unset KERAS_BACKEND .* fit_loop.FitTrainer"):
        Trainer(model, None, num_classes=4, preprocess=Preprocess((0.5,) * 3, (0.25,) * 3))


# The issue-24 command (`--model vit --preset quick`), every default paradigm, made small: a narrow
# one-block ViT on all of digits, 3 pretraining epochs (the original must learn the forget class, or
# relearn time has nothing to train: the target is the original's accuracy minus 10 points) and
# 10 relearn steps (relearn trains a copy of every model, on torch through Keras's fit).
TINY = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=3", "--set", "model.dim=32",
        "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=32",
        "--set", "eval.relearn_max_steps=10", "--set", "pruned.mode=persistent",
        "--set", "pruned_lora.mode=persistent", "--epochs", "1"]


@pytest.mark.slow
def test_the_experiment_runs_on_the_torch_backend_with_the_same_paradigms(tmp_path):
    runs = {}
    for backend in ("jax", "torch"):
        out = tmp_path / backend
        proc = subprocess.run([sys.executable, "-m", "prunelora_keras.run", *TINY, "--out", str(out)],
                              env=clean_env() | {"KERAS_BACKEND": backend}, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[backend] = json.loads((out / "results.json").read_text())
        assert ("training with Keras's fit" in proc.stderr) == (backend == "torch")
    for a, b in zip(runs["jax"]["rows"], runs["torch"]["rows"]):
        assert (a["paradigm"], a["epochs"], a["status"]) == (b["paradigm"], b["epochs"], "ok")
        # the same trainable sets and the same persistent masks (pruned weights stay zero)
        assert a["trainable_params"] == b["trainable_params"], a["paradigm"]
        assert a["sparsity"] == pytest.approx(b["sparsity"]), a["paradigm"]
    assert {r["paradigm"] for r in runs["torch"]["rows"]} == {"retrain", "finetune", "pruned", "lora", "pruned_lora"}
    assert runs["torch"]["stages"]["retrain"]["accuracies"]["forget"] == 0.0
    # the models learn on torch too (Keras's fit once saw ten images an epoch: 10-20% here), and every
    # paradigm's relearn time trained (it once failed on a torch tensor that requires grad)
    assert runs["torch"]["stages"]["original"]["accuracies"]["test"] > 30.0
    assert runs["torch"]["stages"]["original"]["accuracies"]["forget"] > 20.0
    for backend in ("jax", "torch"):
        assert all(r["relearn_target"] > 0 and r["relearn_steps"] > 0 for r in runs[backend]["rows"]), backend
