"""Every unlearning method runs on both ResNets under both BatchNorm policies (``unlearn.bn``).

``freeze`` makes BatchNorm's gamma and beta non-trainable; a recipe that captured them as
variables to train before the policy was applied used to crash Finetune, Pruned and the baselines.
"""

import keras
import numpy as np
import pytest

from prunelora_keras.config import build_config
from prunelora_keras.models import build_model
from prunelora_keras.pipeline import load_data, run_paradigm

METHODS = ("finetune", "pruned", "lora", "pruned_lora", "ga", "rl", "l1_sparse", "salun")
SMALL = ["model.width=0.0625", "data.train_size=100", "unlearn.epochs=[1]", "unlearn.batch_size=50",
         "unlearn.relearn_max_steps=0",
         # an untrained model with frozen BatchNorm statistics: small steps keep the baselines finite
         "unlearn.rl_lr=1e-3", "unlearn.salun_lr=1e-3", "unlearn.l1_lr=1e-3", "unlearn.ga_lr=1e-5"]


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


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
@pytest.mark.parametrize("bn", ["update", "freeze"])
def test_every_method_runs_under_both_batchnorm_policies(originals, model, bn):
    path, ds, split = originals[model]
    cfg = build_config(model, "quick", sets=SMALL + [f"unlearn.bn={bn}", "unlearn.prune_mode=persistent"])
    for method in METHODS:
        rows, _ = run_paradigm(method, cfg, path, ds, split)
        assert [r["status"] for r in rows] == ["ok"], (method, rows)
        assert np.isfinite(rows[0]["RA"]) and 0 <= rows[0]["UA"] <= 100, method
