"""The models, layers and metrics on Keras's torch backend: same weights, same evaluation; the
experiment runs end to end through Keras's fit there."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, clean_env

TORCH_BACKEND = {"KERAS_BACKEND": "torch"}

EVALUATE = r"""
import json, sys
import prunelora_keras, keras
from prunelora_keras import pipeline
from prunelora_keras.config import build_config
cfg = build_config("resnet18", "quick", None, {}, ["model.width=0.125", "data.train_size=300"])
ds, split = pipeline.load_data(cfg)
model = keras.saving.load_model(sys.argv[1], compile=False, safe_mode=True)
from prunelora_keras.evaluation import evaluate_model
from prunelora_keras.features import predict_logits_and_features
metrics = evaluate_model(model, split, ds, cfg).metrics
logits, feats = predict_logits_and_features(model, split.forget.x, ds.mean, ds.std)
print(json.dumps({"backend": keras.backend.backend(), **metrics, "logits": logits.tolist(), "features": feats.tolist()}))
"""


def test_same_weights_give_the_same_metrics_on_jax_and_torch(tmp_path):
    import keras

    from prunelora_keras import pipeline
    from prunelora_keras.config import build_config
    from prunelora_keras.models import build_model
    from prunelora_keras.train import Trainer, make_optimizer

    cfg = build_config("resnet18", "quick", None, {}, ["model.width=0.125", "data.train_size=300"])
    ds, split = pipeline.load_data(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, ds.num_classes, ds.image_shape)
    Trainer(model, make_optimizer(cfg.pretrain, 10), ds.num_classes, ds.mean, ds.std).fit(
        split.train.x, split.train.y, 2, 64)  # a trained model: predictions far from ties
    path = tmp_path / "model.keras"
    model.save(path)
    from prunelora_keras.evaluation import evaluate_model

    jax_metrics = evaluate_model(model, split, ds, cfg).metrics
    proc = subprocess.run([sys.executable, "-c", EVALUATE, str(path)], env=clean_env() | TORCH_BACKEND, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch_metrics["backend"] == "torch"
    # the same function on both backends: logits and penultimate features agree to float32 rounding, far
    # tighter than any metric could show (a wrong layer on either backend fails here)
    from prunelora_keras.features import predict_logits_and_features

    logits, feats = predict_logits_and_features(model, split.forget.x, ds.mean, ds.std)
    np.testing.assert_allclose(np.asarray(torch_metrics["logits"]), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(torch_metrics["features"]), feats, rtol=1e-4, atol=1e-4)
    for m in ("UA", "RA", "TA"):  # one image at most may flip on float rounding
        assert torch_metrics[m] == pytest.approx(jax_metrics[m], abs=100 / len(split.forget) + 1e-9), m
    assert jax_metrics["RA"] > 20.0  # the comparison is of a model that learned something
    for m in ("MIA_loss_logreg", "MIA_confidence_svc"):
        assert torch_metrics[m] == pytest.approx(jax_metrics[m], abs=2.0), m
    for m in ("probe_forget_acc", "probe_forget_acc_test"):  # the features agree across backends too
        assert torch_metrics[m] == pytest.approx(jax_metrics[m], abs=2 * 100 / len(split.forget) + 1e-9), m


TINY = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=2", "--set", "model.dim=16",
        "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=16", "--set", "data.train_size=300",
        "--set", "unlearn.prune_mode=persistent", "--epochs", "1"]


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
