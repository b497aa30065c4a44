"""Boundary Shrink, Boundary Expanding and AMUN: each core step against an independent numpy
computation (FGSM's relabelling, AMUN's growing-radius PGD transcribed from its PyTorch code, the
shadow class and its removal), and each method through ``plk.unlearn`` and the pools."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import optax
import pytest

import prunelora_keras as plk
from prunelora_keras.api.library import copy_model, unlearn_options
from prunelora_keras.api.pools import method_pool
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.datasets import Subset
from prunelora_keras.methods.adversarial import fgsm_labels, pgd_first_flip
from prunelora_keras.methods.base import MethodContext, Targets
from prunelora_keras.methods.boundary import shadow_row, with_units, without_shadow
from prunelora_keras.methods.prepare import prepare_method
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.pool_trainer import member_seeds

PRE = Preprocess(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
SHAPE = (4, 4, 3)


def _linear(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(inputs)))


def _images(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    base = rng.integers(60, 196, (n, *SHAPE)).astype(np.float64)
    base[..., 0] += 40.0 * (y[:, None, None] - 1)  # the class moves the red channel
    return np.clip(base, 0, 255).astype(np.uint8), y


def _trained(seed: int = 0) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    model = _linear(seed)
    x, y = _images()
    Trainer(model, optax.adam(3e-2), num_classes=3, preprocess=PRE, seed=seed, verbose=False).fit(x, y, 8, 12)
    return model, x, y


def _np_model(model):
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("out").get_weights())
    mean, std = np.asarray(PRE.mean), np.asarray(PRE.std)

    def logits(x01):
        return ((x01 - mean) / std).reshape(len(x01), -1) @ w + b

    def grad(x01, y):  # d CE(sum) / d x01, by hand: W (p - onehot), back through the normalisation
        z = logits(x01)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        return (p @ w.T).reshape(x01.shape) / std

    return logits, grad


def test_fgsm_relabels_as_one_signed_step_clipped_and_rounded_to_pixels():
    model, x, y = _trained()
    logits, grad = _np_model(model)
    x01 = x.astype(np.float32) / np.float32(255)  # float32 as PyTorch's: a step of 0.1 (25.5 levels) rounds at
    sign = np.sign(grad(x01.astype(np.float64), y)).astype(np.float32)  # exact halves, decided by float32
    for bound in (0.1, 0.02):
        expected_x = np.round(np.clip(x01 + np.float32(bound) * sign, 0, 1) * np.float32(255)) / np.float32(255)
        x_adv, labels = fgsm_labels(model, x, y, PRE, bound, batch_size=16)  # the last batch padded
        np.testing.assert_allclose(x_adv, expected_x, atol=1e-6)
        np.testing.assert_array_equal(labels, logits(expected_x).argmax(1))
    assert 0 < np.mean(labels != y) < 1  # at 0.02 some cross to another class, some keep their own


def _amun_pgdl2(logits, grad, images, labels, eps=0.04, steps=50):
    """AMUN's ``PGDL2.forward`` (pgdl2_modified.py) in numpy, line for line: the still-correct rows walk
    on, flipped ones leave with the first misclassified point and its prediction; the radius doubles
    after each ``steps`` steps."""
    n = len(labels)
    eps_t, adv_all, preds_all = np.full(n, eps), images.copy(), np.full(n, -1)
    indices, adv, lab = np.arange(n), images.copy(), labels.copy()
    e = np.full(n, eps)
    while indices.size > 0:
        done = False
        for _ in range(steps):
            preds = logits(adv).argmax(1)
            still = preds == lab
            if still.sum() == 0:
                adv_all[indices], eps_t[indices], preds_all[indices] = adv, e, preds
                done = True
                break
            preds_all[indices[~still]] = preds[~still]
            g = grad(adv, lab) / len(lab)  # their loss is the batch mean: the normalisation undoes the scale
            g = g / (np.sqrt((g.reshape(len(g), -1) ** 2).sum(1)) + 1e-10)[:, None, None, None]
            g[~still] = 0.0
            adv = adv + (e / 10.0)[:, None, None, None] * g
            delta = adv - images[indices]
            d_norm = np.sqrt((delta.reshape(len(delta), -1) ** 2).sum(1))
            with np.errstate(divide="ignore"):  # a row misclassified from the start has not moved: e / 0 -> 1
                factor = np.minimum(e / d_norm, 1.0)
            adv = np.clip(images[indices] + delta * factor[:, None, None, None], 0.0, 1.0)
            adv, e, lab, indices = adv[still], e[still], lab[still], indices[still]
            adv_all[indices], eps_t[indices] = adv, e
        if done:
            break
        still = logits(adv).argmax(1) == lab
        e[still] *= 2
    return adv_all, preds_all, eps_t


def test_pgd_first_flip_matches_amuns_pytorch_loop_transcribed_in_numpy():
    model, x, y = _trained()
    logits, grad = _np_model(model)
    x01 = x / 255.0
    want_x, want_y, want_eps = _amun_pgdl2(logits, grad, x01, y, eps=0.01, steps=7)
    flips = pgd_first_flip(model, x, y, PRE, eps=0.01, steps=7, max_rounds=30, batch_size=16)
    assert flips.flipped.all()
    np.testing.assert_array_equal(flips.labels, want_y)
    np.testing.assert_allclose(flips.radius, want_eps, rtol=1e-6)
    np.testing.assert_allclose(flips.x, want_x, atol=2e-5)
    assert (flips.labels != y).all() and len(np.unique(want_eps)) > 2  # radii grew several times
    assert np.all(np.sqrt(((flips.x - x01) ** 2).reshape(len(y), -1).sum(1)) <= flips.radius * (1 + 1e-5))


def test_pgd_first_flip_padded_to_smaller_shapes_and_stopped_early_walks_as_amuns_loop():
    model, _, _ = _trained()
    x, y = _images(140, seed=1)  # 128 + 12 in the first round: the 12, and later the last few, walk at 32 rows
    logits, grad = _np_model(model)
    want_x, want_y, want_eps = _amun_pgdl2(logits, grad, x / 255.0, y, eps=0.01, steps=7)
    flips = pgd_first_flip(model, x, y, PRE, eps=0.01, steps=7, max_rounds=30, batch_size=128)
    np.testing.assert_array_equal(flips.labels, want_y)
    np.testing.assert_allclose(flips.radius, want_eps, rtol=1e-6)
    np.testing.assert_allclose(flips.x, want_x, atol=2e-5)
    wide = pgd_first_flip(model, x, y, PRE, eps=2.0, steps=400, max_rounds=1, batch_size=128)
    assert wide.flipped.all() and wide.steps < len(y) * 400  # every batch stopped once all its rows flipped
    np.testing.assert_array_equal(wide.labels, logits(wide.x).argmax(1))


def test_pgd_first_flip_reports_each_radius_without_changing_the_walk(monkeypatch):
    model, x, y = _trained()
    quiet = pgd_first_flip(model, x, y, PRE, eps=0.01, steps=7, max_rounds=30, batch_size=16)
    lines: list[str] = []
    loud = pgd_first_flip(model, x, y, PRE, eps=0.01, steps=7, max_rounds=30, batch_size=16, progress=lines.append)
    np.testing.assert_array_equal(loud.x, quiet.x)
    np.testing.assert_array_equal(loud.labels, quiet.labels)
    rounds = int(round(np.log2(quiet.radius.max() / 0.01))) + 1  # a line per radius walked, the last: all flipped
    assert len(lines) == rounds and all("adversarial search, radius" in line for line in lines)
    assert lines[0].startswith("adversarial search, radius 0.01 (1 of at most 30) done:")
    assert f"{len(y)} of {len(y)} flipped, 0 go on" in lines[-1]
    # within a radius a line every 30 s at most: a clock that jumps a minute each call gives one per batch
    clock = iter(range(0, 10**6, 60))
    monkeypatch.setattr("prunelora_keras.methods.adversarial.time.perf_counter", lambda: float(next(clock)))
    timed: list[str] = []
    pgd_first_flip(model, x, y, PRE, eps=0.01, steps=7, max_rounds=1, batch_size=16, progress=timed.append)
    walked = [line for line in timed if "walking images walked" in line]
    assert [line.split(": ")[1].split(" walking")[0] for line in walked] == ["16 of 60", "32 of 60", "48 of 60"]
    assert "so far" in timed[-1] and "done" in timed[-1]


def test_prepare_method_routes_amuns_search_progress_to_its_log(capsys, monkeypatch):
    monkeypatch.setattr("prunelora_keras.methods.amun._LAST_SEARCH", [])  # no search reused from another test
    model, x, y = _trained()
    forget, retain = Subset(x[:12], y[:12]), Subset(x[12:], y[12:])
    shared, h = unlearn_options("amun", eps=0.01, steps=7, batch_size=8)
    ctx = MethodContext(model=copy_model(model), options=shared, hparams=h, retain=retain, forget=forget,
                        num_classes=3, preprocess=PRE, seed=0, targets=Targets(), epochs=1)
    prepare_method("amun", ctx, label="amun@lr")
    err = capsys.readouterr().err
    assert "amun@lr: adversarial search, radius 0.01 (1 of at most" in err
    prepare_method("amun", dataclasses.replace(ctx, model=copy_model(model), hparams=dataclasses.replace(h, steps=6)),
                   verbose=False)
    assert "adversarial search" not in capsys.readouterr().err


def test_pgd_first_flip_gives_up_after_max_rounds_keeping_the_label():
    model, x, y = _trained()
    flips = pgd_first_flip(model, x, y, PRE, eps=1e-4, steps=2, max_rounds=1)
    stuck = ~flips.flipped
    assert stuck.any() and np.array_equal(flips.labels[stuck], y[stuck])
    assert np.allclose(flips.radius, 1e-4) and flips.steps == len(y) * 2


def test_shadow_class_widens_the_head_and_its_removal_keeps_the_other_units():
    model, x, _ = _trained()
    kernel, bias = (np.asarray(v) for v in model.get_layer("out").get_weights())
    column, extra = shadow_row((kernel.shape[0], 4), True, "xavier", seed=0)
    wide = with_units(model, "out", np.c_[kernel, column], np.append(bias, extra))
    before = model.predict(x, verbose=0)
    out = wide.predict(x, verbose=0)
    np.testing.assert_allclose(out[:, :3], before, rtol=1e-5, atol=1e-5)
    features = x.reshape(len(x), -1).astype(np.float64)  # predict feeds the stored pixels as they are
    np.testing.assert_allclose(out[:, 3], features @ column + extra, rtol=1e-4, atol=1e-4)
    assert extra == 0 and abs(column.std() - np.sqrt(2 / (48 + 4))) < 0.06
    narrow = without_shadow(wide, "out", 3)
    np.testing.assert_allclose(narrow.predict(x, verbose=0), before, rtol=1e-5, atol=1e-5)
    _, torch_bias = shadow_row((48, 4), True, "torch", seed=0)
    assert 0 < abs(float(torch_bias)) <= 1 / np.sqrt(48)


def _ctx(model, name, retain, forget, seed=0, epochs=2, **options) -> MethodContext:
    shared, hparams = unlearn_options(name, **options)
    return MethodContext(model=model, options=shared, hparams=hparams, retain=retain, forget=forget, num_classes=3,
                         preprocess=PRE, seed=seed, targets=Targets(classifier="out"), epochs=epochs)


def _split(x, y):
    return Subset(x[y != 2], y[y != 2]), Subset(x[y == 2], y[y == 2])


def test_boundary_expanding_trains_the_shadow_class_then_scores_without_it():
    model, x, y = _trained()
    retain, forget = _split(x, y)
    prepared = prepare_method("boundary_expanding", _ctx(copy_model(model), "boundary_expanding", retain, forget, lr=0.05,
                                                         batch_size=8), verbose=False)
    assert prepared.plan.model.output_shape[-1] == 4 and prepared.trainer.num_classes == 4
    assert set(prepared.y) == {3}
    prepared.fit(3, 8)
    trained = prepared.plan.model.get_layer("out").get_weights()
    final = prepared.plan.eval_model()
    assert final.output_shape[-1] == 3
    np.testing.assert_allclose(final.get_layer("out").get_weights()[0], trained[0][:, :3])
    inputs = np.asarray(PRE(forget.x))  # what the trainer feeds the model
    wide = prepared.plan.model.predict(inputs, verbose=0)
    assert np.mean(wide.argmax(1) == 3) > 0.5  # D_f went to the shadow class
    np.testing.assert_allclose(final.predict(inputs, verbose=0), wide[:, :3], rtol=1e-5, atol=1e-5)


def test_boundary_expanding_refuses_a_classifier_whose_outputs_are_not_the_logits():
    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    y = np.arange(12) % 3
    for after, message in ((keras.layers.Dense(3, name="after"), "cannot change its width"),
                           (keras.layers.Softmax(name="after"), "did not add exactly one logit")):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, after(keras.layers.Dense(3, name="out")(inputs)))
        with pytest.raises(ValueError, match=message):
            prepare_method("boundary_expanding", dataclasses.replace(
                _ctx(model, "boundary_expanding", *_split(x, y)), preprocess=Preprocess()), verbose=False)


def test_boundary_expanding_widens_a_convolution_head_through_flatten():
    """Keras Applications' MobileNetV3 ends in a 1x1 Conv2D "logits", Flatten and a linear Activation."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1, 1, 5))
    out = keras.layers.Activation(None, name="predictions")(keras.layers.Flatten()(
        keras.layers.Conv2D(3, 1, name="logits")(inputs)))
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).normal(size=(12, 1, 1, 5)).astype(np.float32)
    ctx = dataclasses.replace(_ctx(model, "boundary_expanding", *_split(x, np.arange(12) % 3)), preprocess=Preprocess(),
                              targets=Targets(classifier="logits"))
    prepared = prepare_method("boundary_expanding", ctx, verbose=False)
    assert prepared.plan.model.output_shape == (None, 4)
    kernel = prepared.plan.model.get_layer("logits").kernel.numpy()
    assert kernel.shape == (1, 1, 5, 4) and abs(kernel[..., 3].std() - np.sqrt(2 / 9)) < 0.4
    assert prepared.plan.eval_model().output_shape == (None, 3)


def test_amun_trains_on_clean_and_adversarial_parts_in_proportion_with_a_per_epoch_decay():
    model, x, y = _trained()
    retain, forget = _split(x, y)
    ctx = _ctx(copy_model(model), "amun", retain, forget, batch_size=12, eps=0.01, steps=7, epochs=3)
    prepared = prepare_method("amun", ctx, verbose=False)
    stream = prepared.plan.stream
    assert len(stream.retain) == len(x) and len(stream.forget) == len(forget)  # D_r + D_f, and A_f
    assert (stream.batch_size, stream.forget_batch) == (9, 3) and prepared.plan.joint  # 60 : 20
    flips = pgd_first_flip(model, forget.x, forget.y, PRE, eps=0.01, steps=7)
    np.testing.assert_array_equal(stream.forget.y, flips.labels)
    np.testing.assert_allclose(stream.forget.x, flips.x)
    assert stream.steps_per_epoch == 7  # 60 clean samples, 9 a batch
    history = prepared.fit(3, 12)
    assert all(np.isfinite(h.loss) for h in history)
    only_forget = prepare_method("amun", _ctx(copy_model(model), "amun", retain, forget, batch_size=12, eps=0.01,
                                              steps=7, remain="no_use"), verbose=False)
    assert len(only_forget.plan.stream.retain) == len(forget)


def test_amuns_plan_divides_the_learning_rate_by_ten_after_every_epoch_and_shares_one_search():
    import jax.numpy as jnp

    from prunelora_keras.methods import amun

    model, x, y = _trained()
    retain, forget = _split(x, y)
    ctx = _ctx(copy_model(model), "amun", retain, forget, batch_size=12, eps=0.01, steps=7, epochs=3, momentum=0.0,
               weight_decay=0.0)  # plain SGD: each update is -lr(t) x gradient
    plan = prepare_method("amun", ctx, verbose=False).plan
    params = [jnp.zeros(v.shape) for v in plan.train_vars]
    state = plan.optimizer.init(params)
    rates = []
    for _ in range(3 * 7):  # three epochs of 7 steps
        updates, state = plan.optimizer.update([jnp.ones(v.shape) for v in plan.train_vars], state, params)
        rates.append(-float(updates[0].ravel()[0]))
    np.testing.assert_allclose(rates, [0.01] * 7 + [0.001] * 7 + [0.0001] * 7, rtol=1e-6)
    again = _ctx(copy_model(model), "amun", retain, forget, batch_size=12, eps=0.01, steps=7, seed=5)
    first = amun._LAST_SEARCH[0][1]
    assert amun.searched(again, again.hparams) is first  # a pool's next member: the same original, one search
    other = dataclasses.replace(again, hparams=dataclasses.replace(again.hparams, eps=0.02))
    assert amun.searched(other, other.hparams) is not first


@pytest.mark.parametrize("name", ["boundary_shrink", "boundary_expanding", "amun"])
def test_each_adversarial_method_runs_in_a_pool_whose_member_k_is_the_single_run_of_seed_k(name):
    model, x, y = _trained()
    retain, forget = _split(x, y)
    extra = {"amun": {"eps": 0.01, "steps": 7}}.get(name, {})

    def ctx(seed):
        keras.utils.set_random_seed(seed)
        return _ctx(copy_model(model), name, retain, forget, seed=seed, batch_size=8, **extra)

    seeds = member_seeds(0, "unlearn", 2)
    pool = method_pool(name, ctx, seeds, verbose=False)
    pool.fit(2)
    logits = pool.logits(forget.x)
    assert logits.shape == (2, len(forget), 3)
    for k, seed in enumerate(seeds):
        prepared = prepare_method(name, ctx(seed), prefix_cache="off", verbose=False)
        prepared.fit(2, 8)
        np.testing.assert_allclose(logits[k], prepared.plan.eval_model().predict(np.asarray(PRE(forget.x)), verbose=0),
                                   rtol=1e-4, atol=1e-4)


def test_each_adversarial_method_through_plk_unlearn_on_a_users_cnn():
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = np.clip(rng.integers(40, 200, (90, 8, 8, 3)) + 30 * y[:, None, None, None], 0, 255) / np.float32(255)
    x = x.astype(np.float32)  # float inputs: the attacks stay in their observed range, unrounded
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(h)))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=30, epochs=20, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 1.0
    f = y == 1
    for name, extra in (("boundary_shrink", {}), ("boundary_expanding", {}), ("amun", {"steps": 5})):
        result = plk.unlearn(model, (x[~f], y[~f]), (x[f], y[f]), method=name, epochs=1, batch_size=15, verbose=False,
                             **extra)
        assert result.model.output_shape[-1] == 3 and np.isfinite(result.history[0]["loss"]), name
        assert [type(layer) for layer in result.model.layers] == [type(layer) for layer in model.layers], name


def test_boundary_expanding_refuses_a_subclassed_model_with_one_line():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.out = keras.layers.Dense(3, name="out")

        def call(self, x):
            return self.out(x)

    model = Net()
    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    model(x)
    with pytest.raises(ValueError, match="functional or Sequential model"):
        prepare_method("boundary_expanding", dataclasses.replace(
            _ctx(model, "boundary_expanding", *_split(x, np.arange(12) % 3)), preprocess=Preprocess()), verbose=False)
