"""The frozen-prefix cache: the cut, its refusals, and exactness against the uncached run."""

import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.batches import batches
from prunelora_keras.models import build_model
from prunelora_keras.experiment.paradigms import build_recipe
from prunelora_keras.experiment.pipeline import load_data, run_paradigm
from prunelora_keras.training.prefix_cache import compute_features, split_frozen_prefix
from prunelora_keras.training.inference import predict_logits
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.data.augment import Preprocess


def tiny_cfg(model="vit", *sets):
    base = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=16", "model.width=0.0625"]
    return build_config(model, "quick", sets=base + list(sets))


def _random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))


def _suffix_logits(psplit, x, preprocess):
    features = compute_features(psplit.prefix, x, preprocess, batch_size=7)
    out = psplit.suffix(features, training=False)
    return keras.ops.convert_to_numpy(out)


@pytest.mark.parametrize("targets, suffix_first", [("reference", "head"), ("intended", "block1_attn_out")])
def test_vit_suffix_of_prefix_features_equals_the_model(targets, suffix_first):
    cfg = tiny_cfg("vit", f"unlearn.vit_lora_targets={targets}")
    model = build_model(cfg.model, 10, (8, 8, 3))
    _random_weights(model)
    recipe = build_recipe("lora", model, cfg)
    psplit, reason = split_frozen_prefix(recipe.model, recipe.train_vars)
    assert psplit is not None, reason
    assert psplit.suffix_layers[0] == suffix_first and "head" in psplit.suffix_layers
    assert "block0_attn_out" in psplit.prefix_layers
    assert not set(psplit.prefix_layers) & set(psplit.suffix_layers)
    if targets == "reference":
        assert psplit.suffix_layers == ["head"] and len(psplit.feature_shapes) == 1
    else:  # the residual stream and the attention output both cross the cut
        assert len(psplit.feature_shapes) == 2
    # the suffix shares the model's variables: training it trains the model
    assert {id(v) for v in recipe.train_vars} <= {id(v) for v in psplit.suffix.trainable_variables}
    x = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    np.testing.assert_allclose(_suffix_logits(psplit, x, Preprocess(mean, std)), predict_logits(recipe.model, x, Preprocess(mean, std)),
                               rtol=1e-5, atol=1e-5)


def test_split_refuses_prefixes_that_change_in_training():
    cfg = tiny_cfg("resnet50")
    recipe = build_recipe("lora", build_model(cfg.model, 10, (8, 8, 3)), cfg)
    set_bn_policy(recipe.model, "update")
    psplit, reason = split_frozen_prefix(recipe.model, recipe.train_vars)
    assert psplit is None and "stem_bn" in reason  # the stem's BatchNorm updates its running statistics
    set_bn_policy(recipe.model, "freeze")
    psplit, reason = split_frozen_prefix(recipe.model, recipe.train_vars)
    assert psplit is not None, reason  # frozen BatchNorm runs in inference mode: the stem is a fixed function
    assert "stem_conv" in psplit.prefix_layers and "stage1_block1_conv1" in psplit.suffix_layers

    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, name="first")(inputs)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    out = keras.layers.Dense(3, name="last")(h)
    model = keras.Model(inputs, out)
    psplit, reason = split_frozen_prefix(model, model.get_layer("last").trainable_variables)
    assert psplit is None and "drop" in reason
    psplit, reason = split_frozen_prefix(model, model.get_layer("first").trainable_variables)
    assert psplit is None and "model input" in reason
    psplit, reason = split_frozen_prefix(model, [])
    assert psplit is None and reason == "nothing trains"


def test_batches_index_every_input_alike():
    x = [np.arange(10), np.arange(10) * 10]
    y = np.arange(10)
    for (a, b), yb in batches(x, y, 4, np.random.default_rng(0)):
        np.testing.assert_array_equal(a, yb)
        np.testing.assert_array_equal(b, yb * 10)


@pytest.mark.parametrize("paradigm, targets", [("lora", "intended"), ("pruned_lora", "reference")])
def test_cached_training_gives_the_metrics_of_the_uncached_run(tmp_path, paradigm, targets):
    sets = ["data.train_size=300", f"unlearn.vit_lora_targets={targets}", "unlearn.epochs=[1,2]",
            "unlearn.batch_size=32", "pruned_lora.mode=persistent"]
    cached_cfg = tiny_cfg("vit", *sets)
    plain_cfg = tiny_cfg("vit", *sets, "unlearn.prefix_cache=off")
    ds, split = load_data(cached_cfg)
    model = build_model(cached_cfg.model, ds.num_classes, ds.image_shape)
    _random_weights(model)
    ckpt = str(tmp_path / "original.keras")
    model.save(ckpt)
    cached_rows, cached_losses = run_paradigm(paradigm, cached_cfg, ckpt, ds, split)
    plain_rows, plain_losses = run_paradigm(paradigm, plain_cfg, ckpt, ds, split)
    assert [r["prefix_cache"] for r in cached_rows] == [True, True]
    assert [r["prefix_cache"] for r in plain_rows] == [False, False]
    for c, p in zip(cached_rows, plain_rows):
        for key in ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA", "sparsity", "trainable_params"):
            assert c[key] == p[key], (c["epochs"], key)
    for name in cached_losses:
        np.testing.assert_allclose(cached_losses[name], plain_losses[name], rtol=1e-4, atol=1e-5)
