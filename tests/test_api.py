"""The public API on models we did not write: keras.applications networks with random weights,
trained briefly on digits, then every registered method through ``plk.unlearn`` and ``plk.evaluate``,
saved and reloaded as ``.keras`` in a fresh process; the torch backend for the methods it supports."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import prunelora_keras as plk
from conftest import REPO, clean_env

sys.path.insert(0, str(REPO / "examples"))
from unlearn_your_model import digits_32  # noqa: E402

FORGET = 3
METHODS = [n for n in plk.methods.names() if n != "retrain"]
# On the keras.applications network itself, the methods whose work depends on its structure: Pruned LoRA
# (adapters on its convolutions, its pruning, the merge back to plain layers, a fresh process reading the
# file) and Boundary Expanding (a shadow class added to its 1x1-convolution head). Every method runs on
# ``look_alike``, built from the same layer types, at a fifth of the compile time.
ON_MOBILENET = ["pruned_lora", "boundary_expanding"]
# AMUN's search for adversarial images at its defaults (50 PGD steps at each of up to 12 radii) takes minutes
# on a model that has learned (the look-alike: 190 s); a few steps and radii run the same code
CHEAPER = {"amun": {"steps": 5, "max_rounds": 3}}


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_t, y_t) = digits_32()
    x, y = x[:360], y[:360]
    f = y == FORGET
    return (x[~f], y[~f]), (x[f], y[f]), (x_t[y_t != FORGET][:200], y_t[y_t != FORGET][:200])


def _fit(model, x, y, epochs, lr=2e-3, batch_size=60):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def mobilenet(digits):
    """MobileNetV3Small at 32x32, random init, ending in logits; trained briefly by plain ``fit``."""
    (x_r, y_r), (x_f, y_f), _ = digits
    from unlearn_your_model import mobilenet as build  # BatchNorm momentum 0.9: meaningful after a few epochs

    model = build(compact=True)
    return _fit(model, np.concatenate([x_r, x_f]), np.concatenate([y_r, y_f]), 3)


def look_alike() -> keras.Model:
    """MobileNetV3Small's layer types at a tenth of its depth: Rescaling, a strided stem, an inverted
    residual block (1x1 expand, depthwise, 1x1 project, Add) with BatchNorm and hard-swish, then its
    head, a pooled 1x1 Conv2D to logits behind Flatten; BatchNorm momentum 0.9 as in ``mobilenet``."""
    keras.utils.set_random_seed(0)
    bn = dict(momentum=0.9, epsilon=1e-3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.Activation("hard_swish")(keras.layers.BatchNormalization(**bn, name="stem_bn")(x))
    y = keras.layers.Conv2D(96, 1, use_bias=False, name="expand")(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(**bn, name="expand_bn")(y))
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(y)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(**bn, name="depthwise_bn")(y))
    y = keras.layers.Conv2D(32, 1, use_bias=False, name="project")(y)
    x = keras.layers.Add()([x, keras.layers.BatchNormalization(**bn, name="project_bn")(y)])
    x = keras.layers.Conv2D(128, 1, strides=2, use_bias=False, name="last_conv")(x)
    x = keras.layers.Activation("hard_swish")(keras.layers.BatchNormalization(**bn, name="last_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Conv2D(10, 1, name="logits")(x)
    return keras.Model(inputs, keras.layers.Flatten()(x), name="look_alike")


@pytest.fixture(scope="module")
def small_model(digits):
    (x_r, y_r), (x_f, y_f), _ = digits
    # 8 epochs of 18 steps: about 93% on the training digits (a model that has learned something to forget)
    return _fit(look_alike(), np.concatenate([x_r, x_f]), np.concatenate([y_r, y_f]), 8, lr=5e-3, batch_size=20)


def test_targets_are_found_and_unwrappable_layers_reported(mobilenet):
    found = plk.find_targets(mobilenet)
    assert found.targets.classifier == "logits"  # a 1x1 Conv2D behind Flatten and a linear Activation
    assert found.targets.train_in_full == ["logits"] and "logits" not in found.targets.lora
    assert any(why == "DepthwiseConv2D" for why in found.not_wrappable.values())
    assert not any(n in found.not_wrappable for n in found.targets.lora)
    depthwise = next(n for n, why in found.not_wrappable.items() if why == "DepthwiseConv2D")
    chosen = plk.find_targets(mobilenet, lora_targets=[depthwise])  # asked for by pattern: reported, not skipped
    assert chosen.not_wrappable == {depthwise: "DepthwiseConv2D"}
    with pytest.raises(ValueError, match="match no layer"):
        plk.find_targets(mobilenet, targets=["no_such_layer"])


def test_options_are_checked_by_name_and_value():
    assert plk.unlearn_options("lora", rank=4, batch_size=16)[1].rank == 4
    assert plk.unlearn_options("scrub", lr=0.1)[1].lr == 0.1
    with pytest.raises(ValueError, match="unknown option"):
        plk.unlearn_options("lora", rnak=4)
    with pytest.raises(ValueError, match="rank = 0 is out of range: must be >= 1"):
        plk.unlearn_options("pruned_lora", rank=0)


def test_prune_returns_a_pruned_copy(mobilenet):
    before = [np.array(w) for w in mobilenet.get_weights()]
    pruned, result = plk.prune(mobilenet, ["expanded_conv_project"], 0.5)
    kernel = pruned.get_layer("expanded_conv_project").kernel.numpy()
    assert int(np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0).sum()) == kernel.shape[-1] // 2
    assert all(np.array_equal(a, b) for a, b in zip(before, mobilenet.get_weights()))


@pytest.mark.slow
@pytest.mark.parametrize("method", ON_MOBILENET)
def test_structure_dependent_methods_unlearn_a_keras_applications_model(method, mobilenet, digits, tmp_path):
    # the reference metrics and a fresh process reading the merged file: on one method
    _unlearn_evaluate_save_reload(method, mobilenet, digits, tmp_path, full=method == "pruned_lora")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_unlearns_a_model_of_keras_layers(method, small_model, digits, tmp_path):
    _unlearn_evaluate_save_reload(method, small_model, digits, tmp_path)


def test_the_look_alike_has_mobilenets_layer_types_and_head(small_model, mobilenet, digits):
    """So the cheaper model stands for the keras.applications one: the same kinds of layers, the same
    classifier found, a DepthwiseConv2D left unwrapped; and its fit took it far above chance (10%)."""
    kinds = {type(layer).__name__ for layer in small_model.layers}
    assert kinds <= {type(layer).__name__ for layer in mobilenet.layers}, kinds
    found = plk.find_targets(small_model)
    assert found.targets.classifier == "logits" and found.not_wrappable == {"depthwise": "DepthwiseConv2D"}
    (x_r, y_r), _, _ = digits
    assert np.mean(np.argmax(small_model.predict(x_r, verbose=0), axis=-1) == y_r) > 0.8


def _unlearn_evaluate_save_reload(method, model, digits, tmp_path, full=False):
    retain, forget, test = digits
    before = [np.array(w) for w in model.get_weights()]
    # persistent masks: the pruned units must still be zero in the merged model (adapters gated)
    result = plk.unlearn(model, retain, forget, method=method, epochs=1, batch_size=60, verbose=False,
                         **({"mode": "persistent"} if method in ("pruned", "pruned_lora") else {}),
                         **CHEAPER.get(method, {}))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the input is untouched
    assert result.model is not model and result.method == method and len(result.history) == 1
    assert (result.trainable_params > 0 or not plk.methods.get(method).trains) and np.isfinite(result.history[0]["loss"])
    if method in ("lora", "pruned_lora"):
        n_all = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        assert result.trainable_params < n_all / 2
    if method in ("pruned", "pruned_lora"):
        assert result.sparsity > 20 and result.diagnostics["pruned_units"]
    scores = plk.evaluate(result.model, retain, forget, test, reference=model if full else None)
    keys = ("UA", "RA", "TA", "MIA_confidence_svc", "MIA_loss_logreg", "probe_forget_acc")
    for key in keys + (("avg_gap", "tow", "cka_forget", "cka_retain") if full else ()):
        assert np.isfinite(scores[key]), (method, key)
    path = tmp_path / f"{method}.keras"
    result.model.save(path)
    x_check = forget[0][:8]
    expected = keras.ops.convert_to_numpy(result.model(x_check, training=False))
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x_check, training=False)), expected,
                               rtol=1e-5, atol=1e-5)
    if not full:
        return
    np.save(tmp_path / "x.npy", x_check)
    code = textwrap.dedent(f"""
        import numpy as np, keras  # plain Keras: the unlearned model holds no layer of this package
        m = keras.saving.load_model({str(path)!r})
        print(keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r}), training=False)).tolist())
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env() | {"KERAS_BACKEND": "jax"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(proc.stdout.strip().splitlines()[-1])), expected,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_another_family_efficientnet_with_prunelora(digits):
    retain, forget, test = digits
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10,
                                              classifier_activation=None)
    found = plk.find_targets(model)
    assert found.targets.classifier == "predictions" and len(found.targets.lora) > 50
    result = plk.unlearn(model, retain, forget, method="pruned_lora", epochs=1, batch_size=60, verbose=False,
                         rank=4, mode="persistent")
    assert result.sparsity > 20 and result.trainable_params < model.count_params() / 4
    assert {type(layer).__name__ for layer in result.model.layers}.isdisjoint({"LoRADense", "LoRAConv2D"})
    assert np.isfinite(plk.evaluate(result.model, retain, forget, test)["UA"])


def test_a_plain_fit_keeps_pruned_units_zero_with_prunemasks():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
    pruned, result = plk.prune(model, ["a"], 0.5, mode="persistent")
    pruned.compile(keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=1e-2), "mse")
    x, y = np.random.default_rng(0).normal(size=(32, 6)), np.random.default_rng(1).normal(size=(32, 3))
    pruned.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[plk.PruneMasks(result)])
    zero = np.all(pruned.get_layer("a").kernel.numpy() == 0, axis=0)
    assert zero.sum() == 4 and np.array_equal(zero, result.unit_masks["a"] == 0)
    unmasked = plk.copy_model(model)
    unmasked.set_weights(pruned.get_weights())
    unmasked.compile(keras.optimizers.SGD(0.5, momentum=0.9), "mse")
    unmasked.fit(x, y, epochs=1, batch_size=8, verbose=0)  # without the callback the zeros come back
    assert np.all(unmasked.get_layer("a").kernel.numpy() != 0, axis=0).sum() == 8


TORCH_SCRIPT = """
import sys
import numpy as np, keras, prunelora_keras as plk
from prunelora_keras.errors import UserError
sys.path.insert(0, "examples")
from unlearn_your_model import digits_32, mobilenet
keras.utils.set_random_seed(0)
(x, y), _ = digits_32()
x, y = x[:150], y[:150]
r, f = (x[y != 3], y[y != 3]), (x[y == 3], y[y == 3])
m = mobilenet(compact=True)  # the keras.applications model of the jax tests, on Keras's torch backend
for name in ("finetune", "pruned_lora"):
    res = plk.unlearn(m, r, f, method=name, epochs=1, batch_size=50, verbose=False)
    print(name, keras.backend.backend(), round(plk.evaluate(res.model, r, f, r)["UA"], 2))
try:
    plk.unlearn(m, r, f, method="scrub", epochs=1, verbose=False)
except UserError as exc:
    print("refused:", exc)
"""


@pytest.mark.slow
def test_torch_backend_runs_the_paradigms_and_refuses_the_rest_clearly():
    proc = subprocess.run([sys.executable, "-c", TORCH_SCRIPT], env=clean_env() | {"KERAS_BACKEND": "torch"},
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finetune torch" in proc.stdout and "pruned_lora torch" in proc.stdout
    assert "refused: scrub runs on the jax backend only" in proc.stdout


def test_the_command_refuses_jax_only_methods_on_torch_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunelora_keras.run", "--model", "vit", "--preset", "quick",
                           "--paradigms", "retrain,lora,scrub", "--out", str(tmp_path / "r")],
                          env=clean_env() | {"KERAS_BACKEND": "torch"}, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: scrub run on the jax backend only")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_data_as_pydataset_or_one_hot_arrays_becomes_the_same_arrays():
    from prunelora_keras.api.checks import labelled_arrays

    x = np.arange(2 * 10 * 3, dtype=np.uint8).reshape(10, 2, 3)
    y = np.arange(10) % 3

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            sl = slice(4 * i, min(4 * i + 4, 10))
            return x[sl], np.eye(3)[y[sl]]  # one-hot labels, as keras pipelines often give them

    for data in ((x, y), (x, np.eye(3)[y]), Batches()):
        xs, ys = labelled_arrays(data, "retain", 3)
        assert xs.dtype == np.float32 and np.array_equal(xs, x.astype(np.float32))  # values kept: no scaling
        assert np.array_equal(ys, y)
    with pytest.raises(ValueError, match="retain must be"):
        labelled_arrays(x, "retain", 3)


def test_evaluate_scores_through_the_fast_layers_what_keras_predicts(small_model, digits):
    """``evaluate`` runs a copy with the package's depthwise and convolution layers (8.5x faster on a
    MobileNetV3Small's forward pass): its accuracies are those of Keras's own predict on the model as given."""
    retain, forget, test = digits
    scores = plk.evaluate(small_model, retain, forget, test, relearn_max_steps=0)

    def acc(x, y):
        return 100.0 * np.mean(np.argmax(small_model.predict(x, verbose=0), axis=-1) == y)

    assert scores["RA"] == pytest.approx(acc(*retain), abs=1e-9)
    assert scores["TA"] == pytest.approx(acc(*test), abs=1e-9)
    assert scores["UA"] == pytest.approx(100.0 - acc(*forget), abs=1e-9)
    assert {type(layer).__name__ for layer in small_model.layers} >= {"Conv2D", "DepthwiseConv2D"}  # untouched
