"""A saved model's evaluation is read back only when model, data, settings, reference and code are the same."""

import dataclasses

import numpy as np

from test_resume import toy_saved_model


def _setup(tmp_path):
    from prunelora_keras.experiment.config import Config

    ds, split, model, ckpt = toy_saved_model(tmp_path / "retrain-k.keras")
    cfg = Config()
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, relearn_max_steps=4, relearn_eval_every=2))
    return ds, split, model, ckpt, cfg


def test_an_evaluation_is_read_back_whole_and_only_for_the_same_model_data_settings_reference_and_code(
        tmp_path, monkeypatch):
    from prunelora_keras.experiment import eval_cache
    from prunelora_keras.experiment.context import evaluate_model, make_reference
    from prunelora_keras.training.checkpoint import save_model

    ds, split, model, ckpt, cfg = _setup(tmp_path)
    reference = make_reference(model, split, ds, cfg)
    assert reference.relearn is not None  # the relearn test is part of what is cached
    calls = []
    monkeypatch.setattr(eval_cache, "evaluate_model", lambda *a, **k: calls.append(1) or evaluate_model(*a, **k))

    first = eval_cache.cached_evaluation(model, ckpt, split, ds, cfg, reference)
    again = eval_cache.cached_evaluation(model, ckpt, split, ds, cfg, reference)
    assert len(calls) == 1  # read back, not recomputed
    direct = evaluate_model(model, split, ds, cfg, reference)  # the uncached evaluation, independently
    assert "relearn_steps" in direct.metrics and np.isfinite(direct.metrics["TA"])
    for ev in (first, again):
        assert ev.metrics == direct.metrics
        assert set(ev.features) == set(eval_cache.KEPT_FEATURES) & set(direct.features)
        for group in ("losses", "features", "logits"):
            for k, v in getattr(ev, group).items():
                np.testing.assert_array_equal(v, getattr(direct, group)[k])
        assert set(ev.logits) == set(direct.logits) and set(ev.losses) == set(direct.losses)

    # anything the numbers depend on evaluates anew, each into a file of its own
    eval_cache.cached_evaluation(model, ckpt, split, ds, dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, mia_members=10)), reference)                       # settings
    eval_cache.cached_evaluation(model, ckpt, split, ds, dataclasses.replace(cfg, seed=1), reference)  # seed
    eval_cache.cached_evaluation(model, ckpt, split, ds, cfg, dataclasses.replace(
        reference, relearn_target=reference.relearn_target - 1))                                    # reference
    eval_cache.cached_evaluation(model, ckpt, split, ds, cfg, None)                                  # none at all
    monkeypatch.setattr(eval_cache, "_code_digest", lambda: "other code")
    eval_cache.cached_evaluation(model, ckpt, split, ds, cfg, reference)                             # code
    monkeypatch.undo()
    monkeypatch.setattr(eval_cache, "evaluate_model", lambda *a, **k: calls.append(1) or evaluate_model(*a, **k))
    model.layers[1].kernel.assign(model.layers[1].kernel * 2.0)
    save_model(model, ckpt)                                                                          # model
    changed = eval_cache.cached_evaluation(model, ckpt, split, ds, cfg, reference)
    assert len(calls) == 7 and changed.metrics["TA"] == evaluate_model(model, split, ds, cfg).metrics["TA"]
    assert len(list(tmp_path.glob("retrain-k.eval-*.npz"))) == 7
