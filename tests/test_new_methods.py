"""SSD, Bad Teacher and MSG: each method's characteristic step against numpy, and each through
``plk.unlearn`` and the pools (member k = the single run of seed k)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

from prunelora_keras import methods
from prunelora_keras.api.library import copy_model, unlearn_options
from prunelora_keras.api.pools import method_pool
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.datasets import Subset
from prunelora_keras.methods.bad_teacher import unlearner_loss
from prunelora_keras.methods.common import mixed_batch_sizes
from prunelora_keras.methods.base import MethodContext, Targets
from prunelora_keras.methods.common import random_init_copy
from prunelora_keras.methods.msg import linear_annealing
from prunelora_keras.methods.options import UnlearnConfig
from prunelora_keras.methods.prepare import prepare_method
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.pool_trainer import member_seeds
from prunelora_keras.training.step import LossInputs


def _mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def _blobs(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 4)).astype(np.float32) + np.eye(3, 4, dtype=np.float32)[y] * 2.0
    return x, y


def _trained_mlp(x, y, seed=0) -> keras.Model:
    model = _mlp(seed)
    Trainer(model, optax.adam(3e-2), num_classes=3, preprocess=Preprocess(), seed=seed, verbose=False).fit(x, y, 5, 8)
    return model


def _ctx(model, name, retain, forget, seed=0, epochs=1, **options) -> MethodContext:
    shared, hparams = unlearn_options(name, **options)
    return MethodContext(model=model, options=shared, hparams=hparams, retain=retain, forget=forget, num_classes=3,
                         preprocess=Preprocess(), seed=seed, targets=Targets(classifier="out"), epochs=epochs)


def _np_gradients(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The gradient of the mean cross-entropy of the two-layer ReLU network, by hand."""
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in weights)
    z1 = x @ w1 + b1
    a1 = np.maximum(z1, 0.0)
    z2 = a1 @ w2 + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz2 = (p - np.eye(3)[y]) / len(y)
    dz1 = (dz2 @ w2.T) * (z1 > 0)
    return [x.T @ dz1, dz1.sum(0), a1.T @ dz2, dz2.sum(0)]


# ---------------------------------------------------------------------------------------------- SSD

def test_ssd_dampens_exactly_the_parameters_numpy_selects_by_the_mean_squared_batch_gradients():
    x, y = _blobs()
    model = _trained_mlp(x, y)
    before = [np.asarray(v.value, np.float64) for v in model.trainable_variables]
    retain, forget = Subset(x[y != 0], y[y != 0]), Subset(x[y == 0], y[y == 0])
    alpha, lam, batch = 2.0, 0.5, 8

    def importances(xs, ys):
        grads = [_np_gradients(before, xs[s:s + batch], ys[s:s + batch]) for s in range(0, len(ys), batch)]
        return [np.mean([g[i] ** 2 for g in grads], axis=0) for i in range(4)]

    imp_f = importances(forget.x.astype(np.float64), forget.y)
    imp_d = importances(np.concatenate([retain.x, forget.x]).astype(np.float64), np.r_[retain.y, forget.y])
    plan = methods.get("ssd").prepare(_ctx(copy_model(model), "ssd", retain, forget, alpha=alpha, dampening=lam,
                                           grad_batch=batch))
    after = [np.asarray(v.value, np.float64) for v in plan.model.trainable_variables]
    picked = 0
    for w, w_new, fi, di in zip(before, after, imp_f, imp_d):
        expect = w.copy()
        for idx in np.ndindex(w.shape):
            if fi[idx] > alpha * di[idx]:
                expect[idx] = w[idx] * min(lam * di[idx] / fi[idx], 1.0)
                picked += 1
        np.testing.assert_allclose(w_new, expect, rtol=2e-4, atol=1e-6)
    assert 0 < picked < sum(w.size for w in before)  # some, not all: the test sees the selection
    assert plan.train_vars == [] and plan.stream.steps_per_epoch == 0 and not methods.get("ssd").trains


def test_ssd_trains_nothing_through_plk_unlearn():
    import prunelora_keras as plk

    x, y = _blobs()
    model = _trained_mlp(x, y)
    one = plk.unlearn(model, (x[y != 0], y[y != 0]), (x[y == 0], y[y == 0]), "ssd", epochs=1, verbose=False)
    three = plk.unlearn(model, (x[y != 0], y[y != 0]), (x[y == 0], y[y == 0]), "ssd", epochs=3, verbose=False)
    for a, b in zip(one.model.get_weights(), three.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(one.model.get_weights(), model.get_weights()))


# --------------------------------------------------------------------------------------- Bad Teacher

def test_bad_teachers_loss_is_their_unlearner_loss_in_numpy():
    rng = np.random.default_rng(1)
    s_r, s_f, t_r, t_f = (rng.normal(size=(n, 4)) * 3 for n in (5, 3, 5, 3))
    temperature = 2.0
    got = float(unlearner_loss(temperature)(LossInputs(
        {"retain": jnp.asarray(s_r, jnp.float32), "forget": jnp.asarray(s_f, jnp.float32)}, {}, {},
        {"retain": jnp.asarray(t_r, jnp.float32), "forget": jnp.asarray(t_f, jnp.float32)})))

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    # their code: one mixed batch, label 1 = forget (the incompetent teacher's softmax), 0 = retain
    student = np.r_[s_r, s_f] / temperature
    labels = np.r_[np.zeros(5), np.ones(3)][:, None]
    full = np.r_[t_r, rng.normal(size=(3, 4))]  # both teachers see every sample; the label picks one
    unlearn = np.r_[rng.normal(size=(5, 4)), t_f]
    target = labels * softmax(unlearn / temperature) + (1 - labels) * softmax(full / temperature)
    log_s = student - student.max(1, keepdims=True)
    log_s -= np.log(np.exp(log_s).sum(1, keepdims=True))
    want = np.mean(target * (np.log(target) - log_s))  # F.kl_div's default reduction: the mean of every entry
    assert got == pytest.approx(want, rel=1e-5)
    assert mixed_batch_sizes(128, 270, 100) == (93, 35) and mixed_batch_sizes(4, 1000, 1) == (3, 1)


def test_the_incompetent_teacher_is_seeded_and_is_not_the_original():
    x, y = _blobs()
    model = _trained_mlp(x, y)
    a, b, c = random_init_copy(model, 5), random_init_copy(model, 5), random_init_copy(model, 6)
    for va, vb, vc, vm in zip(a.get_weights(), b.get_weights(), c.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(va, vb)
        if va.ndim == 2:  # kernels (biases start at zero in every copy)
            assert not np.array_equal(va, vc) and not np.array_equal(va, vm)
    import random

    random.seed(11)
    first = random.random()
    random.seed(11)
    random_init_copy(model, 9)  # Python's random stream is restored around the copy
    assert random.random() == first


def test_a_joint_step_normalises_its_parts_as_one_mixed_batch():
    """``joint``: BatchNorm's running statistics after one step are those of one training-mode pass over
    the parts concatenated (not of two passes, which the plain step makes)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization(momentum=0.5, name="bn")(keras.layers.Dense(6, name="d")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))
    set_bn_policy(model, "update")
    rng = np.random.default_rng(0)
    parts = {"retain": (rng.normal(size=(6, 4)).astype(np.float32), np.zeros(6, np.int64)),
             "forget": (rng.normal(size=(2, 4)).astype(np.float32) + 5.0, np.ones(2, np.int64))}

    class OneBatch:
        steps_per_epoch = 1

        def __call__(self, epoch, rng):
            return iter([parts])

    def moving_mean(joint):
        trainer = Trainer(copy_model(model), optax.sgd(0.0), num_classes=3, preprocess=Preprocess(), verbose=False,
                          loss=lambda i: sum(v.sum() for v in i.logits.values()) * 0.0, joint=joint)
        trainer.fit(epochs=1, stream=OneBatch())
        return np.asarray(trainer.model.get_layer("bn").moving_mean)

    values = [v.value for v in model.trainable_variables]
    _, state = model.stateless_call(values, [v.value for v in model.non_trainable_variables],
                                    np.concatenate([parts["retain"][0], parts["forget"][0]]), training=True)
    bn_paths = [v.path for v in model.non_trainable_variables]
    want = np.asarray(state[bn_paths.index(model.get_layer("bn").moving_mean.path)])
    np.testing.assert_allclose(moving_mean(True), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(moving_mean(False), want, atol=1e-3)


def test_bad_teacher_pulls_d_f_towards_the_random_teacher_and_keeps_d_r_near_the_original():
    x, y = _blobs(96)
    model = _trained_mlp(x, y)
    retain, forget = Subset(x[y != 0], y[y != 0]), Subset(x[y == 0], y[y == 0])
    prepared = prepare_method("bad_teacher", _ctx(copy_model(model), "bad_teacher", retain, forget, epochs=8,
                                                  batch_size=16, lr=1e-2, retain_fraction=1.0), verbose=False)
    assert prepared.plan.joint and set(prepared.plan.teacher) == {"retain", "forget"}
    t_train, t_nt = prepared.plan.teacher["forget"]

    def kl_to_random(m):
        student = jax.nn.log_softmax(m(forget.x, training=False), -1)
        teacher = jax.nn.softmax(m.stateless_call(t_train, t_nt, forget.x, training=False)[0], -1)
        return float(jnp.mean(jnp.sum(teacher * (jnp.log(teacher) - student), -1)))

    before = kl_to_random(prepared.plan.model)
    prepared.trainer.verbose = False
    prepared.fit(8, 16)
    assert kl_to_random(prepared.plan.model) < 0.5 * before
    assert np.mean(np.argmax(prepared.plan.model.predict(retain.x, verbose=0), 1) == retain.y) > 0.8


# ---------------------------------------------------------------------------------------------- MSG

def test_msgs_learning_rate_is_their_linear_annealing_per_epoch():
    sched = linear_annealing(0.4, 4, 3)  # A = 2: epochs at 1/2, 1, 2/3, 1/3 of the peak
    got = [float(sched(step)) for step in range(12)]
    np.testing.assert_allclose(got, np.repeat([0.2, 0.4, 0.4 * 2 / 3, 0.4 / 3], 3), rtol=1e-6)


def test_msg_reinitialises_the_smallest_gradient_entries_and_scales_the_kept_ones():
    x, y = _blobs(64)
    model = _trained_mlp(x, y)
    forget = Subset(x[y == 0][:16], y[y == 0][:16])
    retain = Subset(x[y != 0][:16], y[y != 0][:16])  # as large as D_f: the subset is all of D_r, in some order
    before = [np.asarray(v.value, np.float64) for v in model.trainable_variables]
    # batch sums of batch means over full batches of 8: (1/8) x the sum over every sample, whatever the order
    r = [g * 2 for g in _np_gradients(before, retain.x.astype(np.float64), retain.y)]
    f = [g * 2 for g in _np_gradients(before, forget.x.astype(np.float64), forget.y)]
    hp = dict(init_rate=0.3, layers="all", grad_batch=8, batch_size=8, weight_decay=0.0, momentum=0.0, lr=0.3)
    plan = methods.get("msg").prepare(_ctx(copy_model(model), "msg", retain, forget, epochs=2, **hp))
    after = [np.asarray(v.value, np.float64) for v in plan.model.trainable_variables]
    chosen = {}
    for i in (0, 2):  # the two kernels; biases are never re-initialised
        k = round(0.3 * before[i].size)
        flat = np.zeros(before[i].size, bool)
        flat[np.argsort(np.abs(r[i] - f[i]).ravel(), kind="stable")[:k]] = True
        chosen[i] = flat.reshape(before[i].shape)
        np.testing.assert_array_equal(after[i][~chosen[i]], before[i][~chosen[i]])
        assert np.all(after[i][chosen[i]] != before[i][chosen[i]])
    for i in (1, 3):
        np.testing.assert_array_equal(after[i], before[i])
    # the optimiser: loss gradients x1 on re-initialised entries, x kept_scale on the kept ones, x1 elsewhere
    params = [jnp.asarray(a, jnp.float32) for a in after]
    updates, _ = plan.optimizer.update([jnp.ones_like(p) for p in params], plan.optimizer.init(params), params)
    lr_first = 0.3 * 1 / 1  # E = 2: A = 1, the first epoch at the peak
    for i in (0, 2):
        np.testing.assert_allclose(-np.asarray(updates[i]) / lr_first, np.where(chosen[i], 1.0, 0.1), rtol=1e-6)
    np.testing.assert_allclose(-np.asarray(updates[1]) / lr_first, 1.0, rtol=1e-6)


def test_msg_draws_the_new_entries_from_kaimings_fan_out_normal():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 16))
    h = keras.layers.Conv2D(64, 3, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6, 6, 16)).astype(np.float32), np.arange(16) % 3
    before = np.asarray(model.get_layer("conv").kernel.value)
    plan = methods.get("msg").prepare(_ctx(model, "msg", Subset(x[y != 0], y[y != 0]), Subset(x[y == 0], y[y == 0]),
                                           init_rate=0.5, batch_size=8))
    after = np.asarray(plan.model.get_layer("conv").kernel.value)
    fresh = after[after != before]
    assert abs(fresh.size - before.size / 2) <= 1
    assert np.std(fresh) == pytest.approx(np.sqrt(2.0 / (3 * 3 * 64)), rel=0.05)
    np.testing.assert_array_equal(np.asarray(plan.model.get_layer("out").kernel.value).shape, (64, 3))


def test_msg_on_a_model_without_convolutions_names_the_option():
    x, y = _blobs()
    with pytest.raises(ValueError, match="msg.layers=all"):
        methods.get("msg").prepare(_ctx(_mlp(), "msg", Subset(x[y != 0], y[y != 0]), Subset(x[y == 0], y[y == 0])))


# ------------------------------------------------------------------------ the library and the pools

@pytest.mark.parametrize("name", ["ssd", "bad_teacher", "msg"])
def test_each_new_method_runs_in_a_pool_whose_member_k_is_the_single_run_of_seed_k(name):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = (rng.normal(size=(48, 6, 6, 3)) + y[:, None, None, None]).astype(np.float32)
    Trainer(model, optax.adam(1e-2), num_classes=3, preprocess=Preprocess(), verbose=False).fit(x, y, 3, 16)
    retain, forget = Subset(x[y != 2], y[y != 2]), Subset(x[y == 2], y[y == 2])

    def ctx(seed):
        keras.utils.set_random_seed(seed)
        return dataclasses.replace(_ctx(copy_model(model), name, retain, forget, seed=seed, epochs=2, batch_size=8),
                                   num_classes=3)

    seeds = member_seeds(0, "unlearn", 2)
    pool = method_pool(name, ctx, seeds, verbose=False)
    pool.fit(2)
    logits = pool.logits(forget.x)
    for k, seed in enumerate(seeds):
        prepared = prepare_method(name, ctx(seed), prefix_cache="off", verbose=False)
        prepared.trainer.verbose = False
        prepared.fit(2, 8)
        np.testing.assert_allclose(logits[k], prepared.plan.eval_model().predict(forget.x, verbose=0),
                                   rtol=1e-4, atol=1e-4)
    assert not np.allclose(logits[0], logits[1]) or name == "ssd"  # seeds differ (SSD draws nothing)


def test_no_methods_hyperparameter_shadows_a_shared_option():
    """``unlearn(..., batch_size=8)`` must mean one thing: a method's field named like a shared option
    is refused at registration, and no built-in method has one."""
    shared = {f.name for f in dataclasses.fields(UnlearnConfig)}
    for name in methods.names():
        assert not shared & {f.name for f in dataclasses.fields(methods.get(name).hparams)}, name

    @dataclasses.dataclass(frozen=True)
    class Clash(methods.HParams):
        batch_size: int = methods.hparam(4, "clashes")

    with pytest.raises(ValueError, match="batch_size has the name of a shared option"):
        methods.register(methods.Method("clash", "Clash", None, hparams=Clash))
