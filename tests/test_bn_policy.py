"""Every unlearning method prepares and trains on both ResNets under both BatchNorm policies.

``unlearn.bn = "freeze"`` makes BatchNorm's gamma and beta non-trainable; a recipe that captured
them as variables to train before the policy was applied crashed Finetune, Pruned and the
baselines on the ResNets. Preparing (model surgery, variables, masks, optimiser, trainer) is
checked for every method x policy x ResNet; training, which compiles a step per method, runs every
method under ``freeze`` on the ResNet-18 and Pruned LoRA under ``freeze`` on the ResNet-50 (its
bottleneck blocks).
"""

import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import build_config
from prunelora_keras.models import build_model
from prunelora_keras.experiment.pipeline import load_data, run_paradigm
from prunelora_keras.experiment.context import prepare_paradigm

METHODS = ("finetune", "pruned", "lora", "pruned_lora", "ga", "rl", "l1_sparse", "salun")
SMALL = ["model.width=0.0625", "data.train_size=100", "unlearn.epochs=[1]", "unlearn.batch_size=50",
         "eval.relearn_max_steps=0",
         # an untrained model with frozen BatchNorm statistics: small steps keep the baselines finite
         "rl.lr=1e-3", "salun.lr=1e-3", "l1_sparse.lr=1e-3", "ga.lr=1e-5"]


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """An untrained tiny original model per ResNet, saved as the pipeline saves it."""
    out = {}
    for name in ("resnet18", "resnet50"):
        cfg = build_config(name, "quick", sets=SMALL)
        ds, split = load_data(cfg)
        keras.utils.set_random_seed(0)
        path = tmp_path_factory.mktemp(name) / "original.keras"
        build_model(cfg.model, ds.num_classes, ds.image_shape).save(path)
        out[name] = (str(path), ds, split)
    return out


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
@pytest.mark.parametrize("bn", ["update", "freeze"])
def test_every_method_prepares_under_both_batchnorm_policies(originals, model, bn):
    path, ds, split = originals[model]
    cfg = build_config(model, "quick", sets=SMALL + [f"unlearn.bn={bn}"])
    for method in METHODS:
        prep = prepare_paradigm(method, cfg, path, ds, split)
        bn_vars = [v for layer in prep.plan.model.layers if isinstance(layer, keras.layers.BatchNormalization)
                   for v in layer.trainable_weights]
        assert (len(bn_vars) > 0) == (bn == "update"), method  # freeze: BatchNorm trains nothing
        assert prep.plan.train_vars and all(v.trainable for v in prep.plan.train_vars), method


@pytest.mark.slow
@pytest.mark.parametrize("model, methods", [("resnet18", METHODS), ("resnet50", ("pruned_lora",))])
def test_methods_train_with_frozen_batchnorm(originals, model, methods):
    path, ds, split = originals[model]
    cfg = build_config(model, "quick", sets=SMALL + ["unlearn.bn=freeze"])
    for method in methods:
        rows, _ = run_paradigm(method, cfg, path, ds, split)
        assert [r["status"] for r in rows] == ["ok"], (method, rows)
        assert np.isfinite(rows[0]["RA"]), method
