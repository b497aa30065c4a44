import jax
import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import ModelConfig
from prunelora_keras.models.lora import LoRAConv2D, LoRADense, add_lora, count_params, lora_layer_names, merge
from prunelora_keras.models import build_model, resnet50, simple_vit

RESNET_LORA = [r"stage\d_block\d+_conv\d"]  # the three convs of every bottleneck; not stem, not shortcuts


def np_(t):
    return keras.ops.convert_to_numpy(t)


def infer(model, x):
    """``model(x, training=False)`` as one compiled function: eager calls of a ResNet-50 dispatch
    (and compile) every operation separately, which made these tests slow."""
    if keras.backend.backend() != "jax":  # the same layers on Keras's other backends (CI runs this file on torch)
        return np_(model(x, training=False))
    fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
    return np.asarray(fn([v.value for v in model.trainable_variables],
                         [v.value for v in model.non_trainable_variables], x))


def randomise_adapters(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (LoRADense, LoRAConv2D)):
            layer.lora_b.assign(rng.normal(scale=0.2, size=layer.lora_b.shape).astype("float32"))


def test_reference_trainable_counts():
    """REFERENCE.md: ResNet-50 608,778 (48 conv adapters 588,288 + Linear 20,490); ViT 18,592 (12,288 + 6,304)."""
    r, r_vars = add_lora(resnet50(), RESNET_LORA, rank=8, alpha=16, dropout=0.1, modules_to_save=["head"])
    assert len(lora_layer_names(r)) == 48
    assert count_params(r_vars) == 608_778
    adapters = [v for v in r_vars if "lora_" in v.path]
    assert count_params(adapters) == 588_288
    v, v_vars = add_lora(simple_vit(), ["block11_attn_out", "head"], rank=16, alpha=32, dropout=0.1)
    assert count_params(v_vars) == 18_592
    assert count_params([x for x in v_vars if x.path.startswith("block11_attn_out/")]) == 12_288
    assert count_params([x for x in v_vars if x.path.startswith("head/")]) == 6_304
    # the base stays frozen inside the adapter layers
    assert all(not w.trainable for w in (v.get_layer("head").kernel, v.get_layer("head").bias))


def test_fresh_adapters_change_nothing_and_init_bounds():
    base = build_model(ModelConfig("resnet50", width=0.0625), 10, (8, 8, 3))
    adapted, _ = add_lora(base, RESNET_LORA, rank=4, alpha=8, seed=1)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(infer(adapted, x), infer(base, x))
    layer = adapted.get_layer("stage2_block1_conv2")
    a = np_(layer.lora_a)
    fan_in = 3 * 3 * a.shape[2]
    assert np.abs(a).max() <= 1 / np.sqrt(fan_in) and np.abs(a).max() > 0.8 / np.sqrt(fan_in)
    assert np.all(np_(layer.lora_b) == 0)


@pytest.mark.parametrize("model_cfg, targets", [
    (ModelConfig("resnet50", width=0.0625), RESNET_LORA + ["stem_conv", r".*shortcut_conv", "head"]),
    (ModelConfig("vit", patch_size=2, dim=16, depth=2, heads=2, mlp_dim=32), [r"block\d_.*", "head"]),
])
def test_merge_equals_unmerged(model_cfg, targets):
    base = build_model(model_cfg, 10, (8, 8, 3))
    for v in base.trainable_variables:
        v.assign(np.random.default_rng(1).normal(scale=0.2, size=v.shape).astype("float32"))
    adapted, _ = add_lora(base, targets, rank=3, alpha=6, dropout=0.1, seed=0)
    randomise_adapters(adapted)
    merged = merge(adapted)
    assert not lora_layer_names(merged)
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype("float32")
    out_adapted = infer(adapted, x)
    assert not np.allclose(out_adapted, infer(base, x))  # the adapters do something
    np.testing.assert_allclose(infer(merged, x), out_adapted, rtol=1e-5, atol=1e-5 * np.abs(out_adapted).max())
    # the adapted model is untouched by merging and can keep training
    assert lora_layer_names(adapted) and all(v.trainable for v in adapted.get_layer("head").adapter_variables)


def test_user_functional_model_and_errors():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, activation="relu", name="enc")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    adapted, train_vars = add_lora(model, ["enc"], rank=2, alpha=4, modules_to_save=["out"])
    assert [v.path for v in train_vars] == ["enc/lora_a", "enc/lora_b", "out/kernel", "out/bias"]
    randomise_adapters(adapted)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    a = np_(adapted.get_layer("enc").lora_a)
    b = np_(adapted.get_layer("enc").lora_b)
    w, bias = (np_(t) for t in model.get_layer("enc").weights)
    expected_h = np.maximum(x @ w + bias + 2.0 * (x @ a @ b), 0)  # activation after the adapter
    inner = keras.Model(adapted.input, adapted.get_layer("enc").output)
    np.testing.assert_allclose(np_(inner(x)), expected_h, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no Dense or Conv2D"):
        add_lora(model, ["nothing"])


def test_keras_save_load_keeps_adapters(tmp_path):
    base = build_model(ModelConfig("vit", patch_size=2, dim=16, depth=1, heads=2, mlp_dim=32), 10, (8, 8, 3))
    adapted, _ = add_lora(base, ["block0_attn_out", "head"], rank=4, alpha=8, dropout=0.1, seed=0)
    randomise_adapters(adapted)
    path = tmp_path / "adapted.keras"
    adapted.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert lora_layer_names(loaded) == ["block0_attn_out", "head"]
    head = loaded.get_layer("head")
    assert head.get_config()["adapter_rank"] == 4 and head.get_config()["adapter_dropout"] == 0.1
    assert [v.path for v in loaded.trainable_variables if "lora" in v.path] == \
        [v.path for v in adapted.trainable_variables if "lora" in v.path]
    assert not head.kernel.trainable
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np_(loaded(x)), np_(adapted(x)), rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training():
    layer = LoRADense(4, adapter_rank=2, adapter_alpha=2, adapter_dropout=0.5, adapter_seed=0)
    x = np.ones((64, 8), "float32")
    layer.build(x.shape)
    layer.lora_b.assign(np.ones((2, 4), "float32"))
    # inference: no dropout, exactly x W + b + (alpha / rank) (x A) B, computed here independently
    expected = x @ np_(layer.kernel) + np_(layer.bias) + (2 / 2) * (x @ np_(layer.lora_a)) @ np_(layer.lora_b)
    np.testing.assert_allclose(np_(layer(x, training=False)), expected, rtol=1e-5, atol=1e-5)
    trained = np_(layer(x, training=True))  # training: the adapter's input is dropped at rate 0.5
    assert not np.allclose(trained, expected)
    base = x @ np_(layer.kernel) + np_(layer.bias)
    np.testing.assert_allclose((trained - base).mean(), (expected - base).mean(), rtol=0.25)  # inverted dropout: unbiased


def test_flat_dense_equals_dense_on_token_inputs_and_old_checkpoints_convert(tmp_path):
    from prunelora_keras.models.layers import FlatDense
    from prunelora_keras.models.lora import with_fast_layers as with_flat_dense

    inputs = keras.Input((5, 6))
    h = keras.layers.Dense(7, activation="relu", name="tokens_in")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(3, name="head")(pooled)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).normal(size=(4, 5, 6)).astype("float32")
    fast = with_flat_dense(model)
    assert type(fast.get_layer("tokens_in")) is FlatDense  # token input: converted
    assert type(fast.get_layer("head")) is keras.layers.Dense  # 2-D input: left alone
    np.testing.assert_allclose(np_(fast(x)), np_(model(x)), rtol=1e-6, atol=1e-6)
    assert with_flat_dense(fast) is fast
    path = tmp_path / "fast.keras"
    fast.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("tokens_in")) is FlatDense
    np.testing.assert_allclose(np_(loaded(x)), np_(model(x)), rtol=1e-6, atol=1e-6)


def test_plain_convolutions_and_pools_convert_to_the_fast_layers_and_back_after_unlearning():
    """A user's CNN trains with FastConv2D / FastMaxPool2D; plk.unlearn returns the caller's own types."""
    import prunelora_keras as plk
    from prunelora_keras.models.layers import FastConv2D, FastMaxPool2D
    from prunelora_keras.models.lora import with_fast_layers

    class OwnConv(keras.layers.Conv2D):  # a user's subclass: left alone
        pass

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = OwnConv(6, 1, name="own")(h)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, out)
    x = np.random.default_rng(1).normal(size=(30, 8, 8, 3)).astype("float32")
    fast = with_fast_layers(model)
    assert (type(fast.get_layer("conv")), type(fast.get_layer("pool")), type(fast.get_layer("own"))) \
        == (FastConv2D, FastMaxPool2D, OwnConv)
    np.testing.assert_allclose(np_(fast(x)), np_(model(x)), rtol=1e-5, atol=1e-5)
    y = np.arange(30) % 3
    result = plk.unlearn(model, (x[y != 0], y[y != 0]), (x[y == 0], y[y == 0]), "finetune", epochs=1,
                         verbose=False, batch_size=10)
    assert [type(result.model.get_layer(n)) for n in ("conv", "pool", "own")] \
        == [keras.layers.Conv2D, keras.layers.MaxPooling2D, OwnConv]


def test_keras_fit_and_predict_on_the_adapted_or_merged_copy_leave_the_source_model_intact():
    # Keras's fit/predict on JAX donate the variables' buffers: a copy that shared its source's arrays
    # deleted the source's weights ("Array has been deleted") the first time the copy was used.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 2), "float32")
    before = model.predict(x, verbose=0)
    adapted, _ = add_lora(model, ["a", "b"], rank=2)
    adapted.compile("sgd", "mse")
    adapted.fit(x, y, epochs=1, verbose=0)
    merged = merge(adapted)
    merged.predict(x, verbose=0)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert np.isfinite(adapted.predict(x, verbose=0)).all()
