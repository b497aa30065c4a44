import keras
import numpy as np
import pytest

from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.models.lora import add_lora, merge
from prunelora_keras.models.pruning import (gate_adapters, head_scores, keep_mask, n_to_prune, prune_heads,
    prune_units, sparsity_report, unit_scores)
from prunelora_keras.models import simple_vit
from prunelora_keras.training.fit_loop import FitTrainer
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.data.augment import Preprocess

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def np_(t):
    return keras.ops.convert_to_numpy(t)


def small_net(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    # positive biases keep pruned units alive behind the ReLU, so reference mode can regrow them
    h = keras.layers.Conv2D(7, 3, padding="same", activation="relu", bias_initializer=keras.initializers.Constant(0.1),
                            name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(9, activation="relu", bias_initializer=keras.initializers.Constant(0.1), name="fc")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = np.clip(rng.normal(60 + 60 * y[:, None, None, None], 30, (n, 6, 6, 3)), 0, 255).astype(np.uint8)
    return x, y


def test_counts_use_python_rounding():
    assert n_to_prune(0.5, 7) == 4 and n_to_prune(0.5, 5) == 2 and n_to_prune(0.5, 10) == 5  # half to even
    assert n_to_prune(0.5, 384) == 192 and n_to_prune(0.3, 9) == 3
    mask = keep_mask(np.array([0.1, 5.0, 3.0, 0.2, 4.0]), 0.5)
    np.testing.assert_array_equal(mask, [0, 1, 1, 0, 1])
    with pytest.raises(ValueError):
        n_to_prune(1.0, 4)


def test_scores_against_independent_loop():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    expected = [np.sqrt(sum(k[a, b, c, o] ** 2 for a in range(3) for b in range(3) for c in range(4))) for o in range(5)]
    np.testing.assert_allclose(unit_scores(k), expected, rtol=1e-5)


def test_prune_units_masks_right_count_and_leaves_bias():
    model = small_net()
    bias_before = np_(model.get_layer("fc").bias).copy()
    result = prune_units(model, ["conv", "fc"], amount=0.5)
    conv = np_(model.get_layer("conv").kernel)
    fc = np_(model.get_layer("fc").kernel)
    assert np.sum(np.all(conv.reshape(-1, 7) == 0, axis=0)) == 4  # round(3.5) = 4 of 7
    assert np.sum(np.all(fc == 0, axis=0)) == 4  # round(4.5) = 4 of 9
    np.testing.assert_array_equal(np_(model.get_layer("fc").bias), bias_before)
    assert set(result.masks) == {"conv/kernel", "fc/kernel"} and result.enforced() == {}
    report = sparsity_report(model, ["conv", "fc"])
    assert report["layers"]["conv"]["zero_units"] == pytest.approx(4 / 7)
    assert report["overall"]["zero_units"] == pytest.approx(8 / 16)
    model2 = small_net()
    prune_units(model2, ["fc"], 0.5, include_bias=True)
    assert np.sum(np_(model2.get_layer("fc").bias) == 0) == 4


def _train(model, masks, train_vars=None, steps_epochs=5):
    x, y = data()
    recipe = TrainConfig(optimizer="adamw", lr=0.05, weight_decay=0.1)
    if keras.backend.backend() == "jax":
        Trainer(model, make_optimizer(recipe, 20), num_classes=3, preprocess=Preprocess(MEAN, STD), train_vars=train_vars, masks=masks).fit(
            x, y, steps_epochs, 16)  # 20 steps
    else:  # the fit loop of the other backends must keep the same masks
        FitTrainer(model, recipe, total_steps=20, num_classes=3, preprocess=Preprocess(MEAN, STD), train_vars=train_vars, masks=masks).fit(x, y, steps_epochs, 16)


def test_persistent_masks_survive_adam_with_weight_decay_and_reference_regrows():
    persistent = small_net()
    res = prune_units(persistent, ["conv", "fc"], 0.5, mode="persistent")
    _train(persistent, res.enforced())
    assert sparsity_report(persistent, ["conv", "fc"])["overall"]["zero_units"] == pytest.approx(0.5)
    reference = small_net()
    res = prune_units(reference, ["conv", "fc"], 0.5, mode="reference")
    _train(reference, res.enforced())
    assert sparsity_report(reference, ["conv", "fc"])["overall"]["zero_weights"] < 0.05


def test_lora_on_pruned_layers_persistent_and_reference():
    for mode, expect_zero in (("persistent", True), ("reference", False)):
        base = small_net()
        res = prune_units(base, ["fc", "head"], 0.5, mode=mode)
        adapted, train_vars = add_lora(base, ["fc", "head"], rank=2, alpha=4, seed=0)
        gated = gate_adapters(adapted, res)
        assert gated == (["fc", "head"] if mode == "persistent" else [])
        _train(adapted, res.enforced(), train_vars)
        merged_fc = np_(merge(adapted).get_layer("fc").kernel)
        zero_units = np.sum(np.all(merged_fc == 0, axis=0))
        assert (zero_units == 4) == expect_zero, (mode, zero_units)


def test_sparsity_report_reads_an_adapted_model_on_every_backend():
    """A LoRA layer's merged kernel is computed from the trainable adapter: on torch a tensor that
    requires grad, which ``np.asarray`` refused (RuntimeError); the report counts its pruned units."""
    base = small_net()
    res = prune_units(base, ["fc"], 0.5, mode="persistent")
    adapted, train_vars = add_lora(base, ["fc"], rank=2, alpha=4, seed=0)
    gate_adapters(adapted, res)
    _train(adapted, res.enforced(), train_vars, steps_epochs=1)
    layer = adapted.get_layer("fc")
    kernel, a, b = (np_(v) for v in (layer.kernel, layer.lora_a, layer.lora_b))
    merged = kernel + layer.scale * (a @ b) * np_(layer.input_mask)[:, None] * np_(layer.unit_mask)[None, :]  # numpy
    report = sparsity_report(adapted, ["fc"])["layers"]["fc"]
    assert report["zero_units"] == pytest.approx(np.mean(np.all(merged == 0, axis=0))) == pytest.approx(4 / 9)
    assert report["zero_weights"] == pytest.approx(np.mean(merged == 0))


def test_head_pruning_removes_whole_heads():
    model = simple_vit(input_shape=(8, 8, 3), patch_size=2, dim=24, depth=2, heads=4, mlp_dim=32)
    for v in model.trainable_variables:
        v.assign(np.random.default_rng(0).normal(scale=0.3, size=v.shape).astype("float32"))
    qkv = np_(model.get_layer("block1_attn_qkv").kernel)
    out = np_(model.get_layer("block1_attn_out").kernel)
    scores = head_scores(qkv, out, 4)
    h = 1
    cols = list(range(6, 12)) + list(range(30, 36)) + list(range(54, 60))
    assert scores[h] == pytest.approx(np.sqrt((qkv[:, cols] ** 2).sum() + (out[6:12] ** 2).sum()), rel=1e-5)
    res = prune_heads(model, ["block1"], num_heads=4, amount=0.5)
    kept = res.unit_masks["block1_heads"]
    assert kept.sum() == 2 and set(np.flatnonzero(kept)) == set(np.argsort(-scores)[:2])
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    before = np_(model(x))
    pruned_head = int(np.flatnonzero(kept == 0)[0])
    layer = model.get_layer("block1_attn_qkv")
    k = np_(layer.kernel).copy()
    k[:, pruned_head * 6:(pruned_head + 1) * 6] = 5.0  # a pruned head's queries no longer matter
    layer.kernel.assign(k)
    np.testing.assert_allclose(np_(model(x)), before, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- parity with torch

