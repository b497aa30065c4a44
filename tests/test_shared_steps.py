"""Paradigms with the same architecture and trained variables share one compiled training step."""

import numpy as np

from prunelora_keras.training.caches import clear_caches
from prunelora_keras.experiment.config import build_config
from prunelora_keras.models import build_model
from prunelora_keras.experiment.pipeline import load_data, run_paradigm


def tiny_cfg(*sets):
    base = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=16", "data.train_size=200",
            "unlearn.epochs=[1]", "unlearn.batch_size=32"]
    return build_config("vit", "quick", sets=base + list(sets))


def test_pruned_reuses_finetunes_compiled_step_and_gets_the_same_results(tmp_path, monkeypatch):
    import jax

    compiles = []  # counted at the request, so a persistent XLA cache (tests/conftest.py) cannot hide one
    real = jax.stages.Lowered.compile
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: compiles.append(1) or real(self, *a, **k))
    cfg = tiny_cfg()
    ds, split = load_data(cfg)
    model = build_model(cfg.model, ds.num_classes, ds.image_shape)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # a non-zero head, so pruning and training change the outputs
        v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))
    ckpt = str(tmp_path / "original.keras")
    model.save(ckpt)
    clear_caches()
    finetune, _ = run_paradigm("finetune", cfg, ckpt, ds, split)
    after_finetune = len(compiles)
    assert after_finetune >= 1
    shared, _ = run_paradigm("pruned", cfg, ckpt, ds, split)  # reference mode: no masks, same step
    assert len(compiles) == after_finetune
    clear_caches()
    alone, _ = run_paradigm("pruned", cfg, ckpt, ds, split)  # compiled for itself
    assert len(compiles) == 2 * after_finetune
    for key in ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA", "sparsity"):
        assert shared[0][key] == alone[0][key], key
    # persistent masks are constants of the step: never shared
    persistent = tiny_cfg("pruned.mode=persistent")
    masked, _ = run_paradigm("pruned", persistent, ckpt, ds, split)
    assert len(compiles) == 3 * after_finetune
    assert np.isfinite(masked[0]["RA"])
