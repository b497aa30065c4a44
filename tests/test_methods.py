"""The method registry, and NegGrad+ and SCRUB against independent computations."""

import json

import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

from prunelora_keras import methods
from prunelora_keras.config import build_config
from prunelora_keras.data import Subset
from prunelora_keras.errors import UserError
from prunelora_keras.methods.common import distill_kl
from prunelora_keras.methods.neggrad import RetainWithForget, neggrad_plus_loss
from prunelora_keras.methods.scrub import MaxThenMin, scrub_loss
from prunelora_keras.report import method_label
from prunelora_keras.step import LossInputs
from prunelora_keras.train import Trainer, predict_logits


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_one_registry_feeds_config_cli_report_and_labels():
    names = methods.names()
    assert names[:5] == ("retrain", "finetune", "pruned", "lora", "pruned_lora")
    assert {"ga", "rl", "l1_sparse", "salun", "neggrad_plus", "scrub"} <= set(names)
    assert method_label("neggrad_plus") == "NegGrad+" and method_label("scrub") == "SCRUB"
    cfg = build_config("vit", "quick", sets=["unlearn.paradigms=retrain,scrub,neggrad_plus"])
    assert cfg.unlearn.paradigms == ["retrain", "scrub", "neggrad_plus"]
    with pytest.raises(UserError, match="neggrad_plus, scrub"):  # the message lists the registry's names
        build_config("vit", "quick", sets=["unlearn.paradigms=nonsense"])


def test_a_users_method_registers_once_and_everything_sees_it():
    def prepare(ctx):
        head = ctx.model.get_layer(ctx.targets.classifier)
        return methods.Plan(ctx.model, list(head.trainable_variables), optax.sgd(0.1), "head only",
                            x=ctx.retain.x, y=ctx.retain.y)

    methods.register(methods.Method("head_only_test", "Head only", prepare), replace=True)
    try:
        assert "head_only_test" in methods.names() and method_label("head_only_test") == "Head only"
        cfg = build_config("vit", "quick", sets=["unlearn.paradigms=retrain,head_only_test"])
        assert "head_only_test" in cfg.unlearn.paradigms
        with pytest.raises(ValueError, match="registered already"):
            methods.register(methods.Method("head_only_test", "x", prepare))
        with pytest.raises(ValueError, match="lowercase identifier"):
            methods.register(methods.Method("Bad-Name", "x", prepare))
    finally:
        methods.registry._REGISTRY.pop("head_only_test", None)


def test_neggrad_plus_loss_against_numpy():
    rng = np.random.default_rng(0)
    zr, zf = rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    yr, yf = rng.integers(0, 5, 4), rng.integers(0, 5, 3)
    inputs = LossInputs({"retain": jnp.asarray(zr), "forget": jnp.asarray(zf)},
                        {"retain": jnp.eye(5)[yr], "forget": jnp.eye(5)[yf]}, {"retain": yr, "forget": yf}, None)
    ce_r = -_np_log_softmax(zr)[np.arange(4), yr].mean()
    ce_f = -_np_log_softmax(zf)[np.arange(3), yf].mean()
    assert float(neggrad_plus_loss(0.9)(inputs)) == pytest.approx(0.9 * ce_r - 0.1 * ce_f, rel=1e-5)


def test_distill_kl_is_torch_kl_div_times_t_squared():
    rng = np.random.default_rng(1)
    s, t, temp = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), 4.0
    p_t = np.exp(_np_log_softmax(t / temp))
    expected = np.sum(p_t * (np.log(p_t) - _np_log_softmax(s / temp))) * temp ** 2 / 6  # F.kl_div(sum) * T^2 / n
    assert float(distill_kl(jnp.asarray(s), jnp.asarray(t), temp)) == pytest.approx(expected, rel=1e-5)
    assert float(distill_kl(jnp.asarray(t), jnp.asarray(t), temp)) == pytest.approx(0.0, abs=1e-6)


def test_scrub_loss_max_and_min_steps():
    rng = np.random.default_rng(2)
    z, t, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), rng.integers(0, 3, 5)
    kl = float(distill_kl(jnp.asarray(z), jnp.asarray(t), 4.0))
    ce = -_np_log_softmax(z)[np.arange(5), y].mean()
    loss = scrub_loss(0.001, 0.99, 4.0)
    max_step = LossInputs({"forget": jnp.asarray(z)}, {"forget": jnp.eye(3)[y]}, {"forget": y}, {"forget": jnp.asarray(t)})
    min_step = LossInputs({"retain": jnp.asarray(z)}, {"retain": jnp.eye(3)[y]}, {"retain": y}, {"retain": jnp.asarray(t)})
    assert float(loss(max_step)) == pytest.approx(-kl, rel=1e-5)
    assert float(loss(min_step)) == pytest.approx(0.001 * kl + 0.99 * ce, rel=1e-5)


def test_streams_pair_retain_with_cycled_forget_and_put_max_steps_first():
    retain = Subset(np.arange(10)[:, None], np.zeros(10, int))
    forget = Subset(np.arange(100, 103)[:, None], np.ones(3, int))
    stream = RetainWithForget(retain, forget, batch_size=4, forget_batch=2)
    out = list(stream(1, np.random.default_rng(0)))
    assert len(out) == stream.steps_per_epoch == 3
    assert all(len(b["forget"][1]) == 2 for b in out)  # one forget batch size: one compiled step
    assert sorted(np.concatenate([np.asarray(b["retain"][0]).ravel() for b in out]).tolist()) == list(range(10))
    assert np.asarray(out[0]["forget"][0]).tolist() == np.asarray(out[1]["forget"][0]).tolist()  # one full forget batch, cycled
    scrub = MaxThenMin(retain, forget, batch_size=4, forget_batch=2, msteps=2)
    parts = lambda e: [next(iter(b)) for b in scrub(e, np.random.default_rng(e))]  # noqa: E731
    assert parts(1) == ["forget", "forget", "retain", "retain", "retain"] == parts(2)
    assert parts(3) == ["retain"] * 3  # max-steps only in the first msteps epochs


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    h = keras.layers.Dropout(0.3)(h)  # the student (training mode) differs from the teacher: KL has a gradient
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def _data(n, label, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    x[..., label] = 255  # one channel saturated per class: learnable
    return x, np.full(n, label)


def test_scrub_max_steps_push_the_student_away_from_the_teacher_on_d_f_only():
    """One SCRUB epoch of max-steps on the real step: the KL to the frozen teacher on D_f grows, and
    the teacher (the original's values) is untouched. (At student == teacher the KL's gradient is 0:
    the max-steps move only because the student runs in training mode, here through dropout, as
    SCRUB's does through dropout and BatchNorm.)"""
    from prunelora_keras.methods import MethodContext, Targets

    model = _tiny()
    mean, std = (0.5,) * 3, (0.25,) * 3
    xs, ys = zip(*(_data(24, c, c) for c in range(3)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    Trainer(model, optax.adam(1e-2), 3, mean, std, verbose=False).fit(x, y, 10, 8)
    before = predict_logits(model, xs[2], mean, std)
    opts = build_config("vit", "quick", sets=["unlearn.scrub_lr=0.05", "unlearn.scrub_msteps=1",
                                              "unlearn.batch_size=8"]).unlearn
    retain = Subset(np.concatenate(xs[:2]), np.concatenate(ys[:2]))
    ctx = MethodContext(model, opts, retain, Subset(xs[2], ys[2]), 3, mean, std, 0, Targets(classifier="head"), epochs=1)
    plan = methods.get("scrub").prepare(ctx)
    teacher = [np.array(v) for v in plan.teacher[0]]
    stream = MaxThenMin(retain, Subset(xs[2], ys[2]), 8, 8, msteps=1)
    stream_max_only = lambda epoch, rng: (b for b in stream(epoch, rng) if "forget" in b)  # noqa: E731
    stream_max_only.steps_per_epoch = 3
    trainer = Trainer(plan.model, plan.optimizer, 3, mean, std, train_vars=plan.train_vars, loss=plan.loss,
                      teacher=plan.teacher, verbose=False)
    trainer.fit(epochs=1, stream=stream_max_only)
    after = predict_logits(plan.model, xs[2], mean, std)
    kl = lambda a: float(distill_kl(jnp.asarray(a), jnp.asarray(before), opts.scrub_temperature))  # noqa: E731
    assert kl(before) == pytest.approx(0.0, abs=1e-6) and kl(after) > 1e-3
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(teacher, plan.teacher[0]))


def test_unknown_method_and_retrain_are_refused_with_one_line():
    from prunelora_keras.unlearning import prepare_method

    with pytest.raises(ValueError, match="unknown method 'nope'; registered: retrain, finetune"):
        methods.get("nope")
    with pytest.raises(UserError, match="exact baseline"):
        prepare_method("retrain", None)
