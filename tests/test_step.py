"""The one pure training step (step.train_step): plain cross-entropy, a two-part loss and a teacher,
each against an independent numpy computation of softmax regression's loss and gradient."""

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.training.step import LossInputs, StepConsts, StepSpec, TrainState, cross_entropy_loss, train_step
from prunelora_keras.training.loop import Trainer
from prunelora_keras.data.augment import Preprocess


def _linear(seed=0, d=5, k=3):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((d,))
    model = keras.Model(inp, keras.layers.Dense(k, name="head")(inp))
    rng = np.random.default_rng(seed)
    model.get_layer("head").kernel.assign(rng.normal(size=(d, k)).astype("float32"))
    model.get_layer("head").bias.assign(rng.normal(size=(k,)).astype("float32"))
    return model


def _np_ce_and_grad(w, b, x, y, k):
    """Mean softmax cross-entropy of a linear model and its gradient, in float64 numpy."""
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.eye(k)[y]
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    g = (p - onehot) / len(y)
    return loss, x.T @ g, g.sum(0)


def _spec(model, loss, lr=0.1):
    return StepSpec(model, optax.sgd(lr), loss, 3, (0, 1), (), (None, None), features=True)


def _state(model, opt):
    train = [jnp.array(v.value) for v in model.trainable_variables]
    return TrainState(train, [], opt.init(train))


def test_plain_step_is_sgd_on_cross_entropy_and_pure():
    model = _linear()
    spec = _spec(model, cross_entropy_loss)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.integers(0, 3, 8).astype("int32")
    w, b = (np.asarray(v.value, np.float64) for v in model.trainable_variables)
    loss, gw, gb = _np_ce_and_grad(w, b, x.astype(np.float64), y, 3)
    step = jax.jit(functools.partial(train_step, spec))
    batch = {"train": ((x,), y)}
    state1, metrics1 = step(_state(model, spec.optimizer), StepConsts([]), batch, jax.random.key(0))
    state2, metrics2 = step(_state(model, spec.optimizer), StepConsts([]), batch, jax.random.key(0))
    np.testing.assert_allclose(float(metrics1["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state1.train[0]), w - 0.1 * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state1.train[1]), b - 0.1 * gb, rtol=1e-5, atol=1e-6)
    for a, c in zip(state1.train, state2.train):  # pure: the same arguments, the same result
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert int(metrics1["count"]) == 8


def test_two_part_loss_gets_each_parts_logits():
    """NegGrad+-shaped loss: alpha CE(retain) - (1 - alpha) CE(forget), one forward pass per part."""
    alpha = 0.75

    def neggrad(inputs: LossInputs):
        ce = {n: optax.softmax_cross_entropy(inputs.logits[n], inputs.targets[n]).mean() for n in inputs.logits}
        return alpha * ce["retain"] - (1 - alpha) * ce["forget"]

    model = _linear(2)
    spec = _spec(model, neggrad)
    rng = np.random.default_rng(3)
    xr, yr = rng.normal(size=(6, 5)).astype("float32"), rng.integers(0, 3, 6).astype("int32")
    xf, yf = rng.normal(size=(4, 5)).astype("float32"), rng.integers(0, 3, 4).astype("int32")
    w, b = (np.asarray(v.value, np.float64) for v in model.trainable_variables)
    lr_, gwr, gbr = _np_ce_and_grad(w, b, xr.astype(np.float64), yr, 3)
    lf_, gwf, gbf = _np_ce_and_grad(w, b, xf.astype(np.float64), yf, 3)
    state, metrics = jax.jit(functools.partial(train_step, spec))(
        _state(model, spec.optimizer), StepConsts([]), {"retain": ((xr,), yr), "forget": ((xf,), yf)},
        jax.random.key(0))
    np.testing.assert_allclose(float(metrics["loss"]), alpha * lr_ - (1 - alpha) * lf_, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.train[0]), w - 0.1 * (alpha * gwr - (1 - alpha) * gwf),
                               rtol=1e-5, atol=1e-6)
    assert int(metrics["count"]) == 10


def test_teacher_logits_reach_the_loss():
    """A KL-to-teacher loss is zero with the student equal to its teacher, so SGD leaves it in place;
    a different teacher moves it."""

    def kl(inputs: LossInputs):
        (n,) = inputs.logits
        t = jax.nn.log_softmax(inputs.teacher[n])
        s = jax.nn.log_softmax(inputs.logits[n])
        return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))

    model = _linear(4)
    spec = _spec(model, kl)
    x = np.random.default_rng(5).normal(size=(6, 5)).astype("float32")
    y = np.zeros(6, np.int32)
    same = ([v.value for v in model.trainable_variables], [])
    step = jax.jit(functools.partial(train_step, spec))
    state, metrics = step(_state(model, spec.optimizer), StepConsts([], same), {"forget": ((x,), y)}, jax.random.key(0))
    assert abs(float(metrics["loss"])) < 1e-6
    np.testing.assert_allclose(np.asarray(state.train[0]), np.asarray(model.trainable_variables[0].value), atol=1e-6)
    other = ([v.value * 2.0 for v in model.trainable_variables], [])
    state, metrics = step(_state(model, spec.optimizer), StepConsts([], other), {"forget": ((x,), y)},
                          jax.random.key(0))
    assert float(metrics["loss"]) > 1e-3
    assert not np.allclose(np.asarray(state.train[0]), np.asarray(model.trainable_variables[0].value))


def test_trainer_runs_a_methods_own_stream():
    """A stream of two-part batches: every batch reaches the step, the epoch counts both parts."""
    model = _linear(6)
    rng = np.random.default_rng(7)
    xr, yr = rng.normal(size=(12, 5)).astype("float32"), rng.integers(0, 3, 12).astype("int32")
    xf, yf = rng.normal(size=(4, 5)).astype("float32"), rng.integers(0, 3, 4).astype("int32")
    seen = []

    class Paired:
        steps_per_epoch = 3

        def __call__(self, epoch, rng_):
            for i in range(3):
                seen.append(epoch)
                yield {"retain": (xr[4 * i:4 * i + 4], yr[4 * i:4 * i + 4]), "forget": (xf[:2], yf[:2])}

    def loss(inputs):
        return sum(optax.softmax_cross_entropy(inputs.logits[n], inputs.targets[n]).mean() for n in inputs.logits)

    trainer = Trainer(model, optax.sgd(0.05), num_classes=3, preprocess=Preprocess(), features=True, loss=loss, verbose=False)
    history = trainer.fit(epochs=2, stream=Paired())
    assert seen == [1, 1, 1, 2, 2, 2] and trainer.global_step == 6
    assert len(history) == 2 and all(np.isfinite(h.loss) for h in history)
    assert 0.0 <= history[-1].accuracy <= 1.0
