"""bfloat16 compute on float32 master weights: the rebuilt models, the loop, the pipeline's rows."""

import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import build_config
from prunelora_keras.errors import UserError
from prunelora_keras.models.lora import add_lora, merge
from prunelora_keras.models import build_model
from prunelora_keras.experiment.pipeline import load_data, run_paradigm
from prunelora_keras.models.precision import evaluation_model, training_model, with_dtype_policy
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.training.inference import predict_logits
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.data.augment import Preprocess


def tiny_cfg(model="vit", *sets):
    base = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=16", "model.width=0.0625"]
    return build_config(model, "quick", sets=base + list(sets))


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n=24, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))


@pytest.mark.parametrize("arch", ["vit"])
def test_mixed_model_computes_in_bfloat16_on_float32_weights(arch):
    cfg = tiny_cfg(arch)
    model = build_model(cfg.model, 10, (8, 8, 3))
    _randomise(model)
    mixed = training_model(model, "bfloat16")
    computing = [layer for layer in mixed.layers if layer.weights]
    assert computing and all(layer.compute_dtype == "bfloat16" for layer in computing)
    assert all(v.dtype == "float32" for v in mixed.variables)  # master weights (and BN statistics) stay float32
    x = _images()
    ref = predict_logits(model, x, Preprocess(MEAN, STD))
    low = predict_logits(mixed, x, Preprocess(MEAN, STD))
    assert not np.array_equal(ref, low)  # it really computed in bfloat16
    np.testing.assert_allclose(low, ref, rtol=0.1, atol=0.1 * np.abs(ref).max())
    back = evaluation_model(mixed)  # same master weights in float32: exactly the original function
    assert all(layer.compute_dtype == "float32" for layer in back.layers if layer.weights)
    np.testing.assert_allclose(predict_logits(back, x, Preprocess(MEAN, STD)), ref, rtol=1e-6, atol=1e-6)
    assert training_model(model, "float32") is model and evaluation_model(model) is model


def _train(precision, lora: bool, epochs: int):
    cfg = tiny_cfg("vit")
    keras.utils.set_random_seed(0)
    model = training_model(build_model(cfg.model, 10, (8, 8, 3)), precision)
    if lora:
        model, train_vars = add_lora(model, ["head", "block1_attn_out"], rank=4, alpha=8, seed=0)
    else:
        train_vars = list(model.trainable_variables)
    x, y = _images(64), np.arange(64) % 10
    optimizer = make_optimizer(TrainConfig(epochs=epochs, optimizer="adam", lr=3e-3), 2 * epochs)
    trainer = Trainer(model, optimizer, num_classes=10, preprocess=Preprocess(MEAN, STD), train_vars=train_vars, seed=0)
    return model, train_vars, np.array([h.loss for h in trainer.fit(x, y, epochs, 32)]), x


def test_mixed_training_tracks_float32_training_on_float32_weights():
    model, train_vars, losses, _ = _train("bfloat16", lora=False, epochs=15)
    assert all(layer.compute_dtype == "bfloat16" for layer in model.layers if layer.weights)
    assert all(v.dtype == "float32" for v in train_vars)
    _, _, ref_losses, _ = _train("float32", lora=False, epochs=15)
    assert ref_losses[-1] < 0.9 * ref_losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=0.01)  # the same descent, up to bfloat16 rounding
    assert not np.array_equal(losses, ref_losses)


def test_mixed_lora_trains_and_evaluates_merged_in_float32():
    adapted, train_vars, _, x = _train("bfloat16", lora=True, epochs=3)
    assert all(layer.compute_dtype == "bfloat16" for layer in adapted.layers if layer.weights)
    assert all(v.dtype == "float32" for v in train_vars)
    assert np.abs(np.asarray(adapted.get_layer("head").lora_b.value)).max() > 0  # the adapter trained
    evaluated = evaluation_model(merge(adapted))
    assert all(layer.compute_dtype == "float32" for layer in evaluated.layers if layer.weights)
    np.testing.assert_allclose(predict_logits(evaluated, x, Preprocess(MEAN, STD)),
                               predict_logits(with_dtype_policy(adapted, "float32"), x, Preprocess(MEAN, STD)),
                               rtol=1e-4, atol=1e-4)


def test_pipeline_rows_under_bfloat16(tmp_path):
    cfg = tiny_cfg("vit", "data.train_size=300", "unlearn.epochs=[1]", "unlearn.batch_size=32",
                   "unlearn.precision=bfloat16")
    ds, split = load_data(cfg)
    model = build_model(cfg.model, ds.num_classes, ds.image_shape)
    _randomise(model)
    ckpt = str(tmp_path / "original.keras")
    model.save(ckpt)
    f32 = tiny_cfg("vit", "data.train_size=300", "unlearn.epochs=[1]", "unlearn.batch_size=32")
    for paradigm in ("finetune",):  # the adapters' bfloat16 path: test_mixed_lora_trains_...
        rows, _ = run_paradigm(paradigm, cfg, ckpt, ds, split)
        assert [r["status"] for r in rows] == ["ok"] and rows[0]["precision"] == "bfloat16"
        assert np.isfinite(rows[0]["rte_s"])
        ref, _ = run_paradigm(paradigm, f32, ckpt, ds, split)
        assert ref[0]["precision"] == "float32"
        # bfloat16 compute on float32 master weights tracks float32 training: the same model, within a few
        # images; the metrics are of the float32 evaluation of those weights
        for key in ("UA", "RA", "TA"):
            assert rows[0][key] == pytest.approx(ref[0][key], abs=5.0), key
        assert rows[0]["RA"] != pytest.approx(_untrained_ra(model, split, ds), abs=1e-9)  # it trained


def test_unknown_precision_is_refused():
    with pytest.raises(UserError, match="unlearn.precision"):
        tiny_cfg("vit", "unlearn.precision=float16")


def _untrained_ra(model, split, ds):
    return 100.0 * float(np.mean(np.argmax(predict_logits(model, split.retain.x, ds.preprocess), 1) == split.retain.y))


def test_pretraining_under_bfloat16_saves_a_float32_model_that_tracks_float32_training(tmp_path):
    from prunelora_keras.experiment.stages import stage_key, train_stage, data_identity

    sets = ("data.train_size=200", "pretrain.epochs=2")
    f32 = tiny_cfg("vit", *sets)
    bf16 = tiny_cfg("vit", *sets, "pretrain.precision=bfloat16")
    ds, split = load_data(f32)
    data_id = data_identity(f32)
    ref, ref_result = train_stage("original", f32, f32.pretrain, split.train, ds, split, tmp_path / "a", data_id)
    mixed, result = train_stage("original", bf16, bf16.pretrain, split.train, ds, split, tmp_path / "b", data_id)
    saved = keras.saving.load_model(result.checkpoint, compile=False)
    # the checkpoint is a plain float32 model: every layer's policy, every variable
    assert {layer.dtype_policy.name for layer in saved.layers if hasattr(layer, "dtype_policy")} == {"float32"}
    assert {str(v.dtype) for v in saved.weights} == {"float32"}
    # it trained (the weights moved from the seeded initialisation) and tracks the float32 run closely
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(mixed.get_weights(), ref.get_weights()))
    assert 0 < moved < 0.5
    assert result.accuracies["test"] == pytest.approx(ref_result.accuracies["test"], abs=10.0)
    # the default precision leaves the keys of earlier checkpoints alone (this one, computed by the code
    # before the option existed); bfloat16 is another model
    assert stage_key(f32, "original", f32.pretrain, data_id) == "6c38c404c9b1"
    assert stage_key(bf16, "original", bf16.pretrain, data_id) != "6c38c404c9b1"


def test_unknown_pretrain_precision_is_refused():
    with pytest.raises(UserError, match="pretrain.precision"):
        tiny_cfg("vit", "pretrain.precision=float16")
