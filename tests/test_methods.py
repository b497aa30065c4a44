"""The method registry, and NegGrad+ and SCRUB against independent computations."""

import dataclasses

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

from prunelora_keras import methods
from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.datasets import Subset
from prunelora_keras.errors import UserError
from prunelora_keras.methods.common import distill_kl
from prunelora_keras.methods.common import ForgetThenRetain, RetainWithForget
from prunelora_keras.methods.neggrad import neggrad_plus_loss
from prunelora_keras.methods.scrub import MaxThenMin, scrub_loss
import prunelora_keras as plk
from prunelora_keras.methods.hparams import POSITIVE, HParams, hparam
from prunelora_keras.methods.builtin_hparams import ScrubHParams
from prunelora_keras.experiment.labels import method_label
from prunelora_keras.training.step import LossInputs
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.inference import predict_logits
from prunelora_keras.data.augment import Preprocess


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


@dataclasses.dataclass(frozen=True)
class HeadOnlyHParams(HParams):
    lr: float = hparam(0.1, "learning rate", check=POSITIVE)
    steps_scale: int = hparam(1, "a knob of this test's own", check=(lambda v: v in (1, 2), "must be 1 or 2"))
    part: str = hparam("head", "which part trains", choices=("head", "all"))


def test_a_users_method_registers_once_and_everything_sees_it():
    """A user's method with its own hyperparameter dataclass: the command's --set and --list-keys,
    plk.unlearn's keywords and their validation come from its fields, with nothing else to write."""
    seen = []

    def prepare(ctx):
        seen.append(ctx.hparams)
        head = ctx.model.get_layer(ctx.targets.classifier)
        return methods.Plan(model=ctx.model, train_vars=list(head.trainable_variables),
                            optimizer=optax.sgd(ctx.hparams.lr), description="head only", x=ctx.retain.x,
                            y=ctx.retain.y)

    methods.register(methods.Method("head_only_test", "Head only", prepare, hparams=HeadOnlyHParams), replace=True)
    try:
        assert "head_only_test" in methods.names() and method_label("head_only_test") == "Head only"
        cfg = build_config("vit", "quick", sets=["unlearn.paradigms=retrain,head_only_test",
                                                 "head_only_test.lr=0.5", "methods.head_only_test.part=all"])
        assert "head_only_test" in cfg.unlearn.paradigms
        assert cfg.methods["head_only_test"] == HeadOnlyHParams(lr=0.5, part="all")
        with pytest.raises(UserError, match=r"head_only_test.steps_scale = 3 is out of range: must be 1 or 2"):
            build_config("vit", "quick", sets=["head_only_test.steps_scale=3"])
        with pytest.raises(UserError, match=r"head_only_test.part = 'tail' is not valid: choose one of head, all"):
            build_config("vit", "quick", sets=["head_only_test.part=tail"])
        from prunelora_keras.experiment.arguments import list_keys

        assert "head_only_test.steps_scale" in list_keys(cfg, "test")
        x = np.random.default_rng(0).normal(size=(24, 4)).astype("float32")
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="head")])
        plk.unlearn(model, (x[:16], np.arange(16) % 2), (x[16:], np.full(8, 2)), "head_only_test", epochs=1,
                    verbose=False, lr=0.25)
        assert seen[-1] == HeadOnlyHParams(lr=0.25)
        with pytest.raises(ValueError, match="unknown option 'rate' for method 'head_only_test'"):
            plk.unlearn(model, (x[:16], np.arange(16) % 2), (x[16:], np.full(8, 2)), "head_only_test", rate=1)
        with pytest.raises(ValueError, match="registered already"):
            methods.register(methods.Method("head_only_test", "x", prepare))
        with pytest.raises(ValueError, match="lowercase identifier"):
            methods.register(methods.Method("Bad-Name", "x", prepare))
        with pytest.raises(ValueError, match="hparams must be a frozen dataclass"):
            methods.register(methods.Method("loose", "x", prepare, hparams=dict))
    finally:
        methods.registry._REGISTRY.pop("head_only_test", None)


def test_the_registry_and_the_light_list_hold_the_same_hyperparameters():
    """The command checks keys against builtin_hparams.BUILTIN_HPARAMS before the registry is imported."""
    from prunelora_keras.methods.builtin_hparams import BUILTIN_HPARAMS

    builtin = [n for n in methods.names() if n in BUILTIN_HPARAMS]
    assert {n: methods.get(n).hparams for n in builtin} == BUILTIN_HPARAMS


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
    dropping = MaxThenMin(retain, forget, batch_size=4, forget_batch=2, msteps=1, drop_last=True)
    out = list(dropping(1, np.random.default_rng(0)))
    seen = sorted(np.concatenate([np.asarray(b["forget"][0]).ravel() for b in out if "forget" in b]).tolist())
    assert seen == [100, 101, 102] and len(out) == dropping.steps_per_epoch == 2 + 2  # D_f whole, D_r's 2 dropped


def test_forget_then_retain_never_drops_d_f_even_when_smaller_than_a_batch():
    x = np.arange(13)[:, None]
    stream = ForgetThenRetain(x, np.zeros(13, int), n_retain=10, batch_size=4, drop_last=True)  # D_f: 3 images
    out = [np.asarray(b["train"][0]).ravel().tolist() for b in stream(1, np.random.default_rng(0))]
    assert len(out) == stream.steps_per_epoch == 1 + 2  # D_f's one partial batch, D_r's two full ones
    assert sorted(out[0]) == [10, 11, 12] and all(len(b) == 4 and max(b) < 10 for b in out[1:])


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
    Trainer(model, optax.adam(1e-2), num_classes=3, preprocess=Preprocess(mean, std), verbose=False).fit(x, y, 10, 8)
    before = predict_logits(model, xs[2], Preprocess(mean, std))
    cfg = build_config("vit", "quick", sets=["scrub.lr=0.05", "scrub.msteps=1", "unlearn.batch_size=8"])
    retain = Subset(np.concatenate(xs[:2]), np.concatenate(ys[:2]))
    ctx = MethodContext(model=model, options=cfg.unlearn, hparams=cfg.methods["scrub"], retain=retain,
                        forget=Subset(xs[2], ys[2]), num_classes=3, preprocess=Preprocess(mean, std), seed=0,
                        targets=Targets(classifier="head"), epochs=1)
    plan = methods.get("scrub").prepare(ctx)
    teacher = [np.array(v) for v in plan.teacher[0]]
    stream = MaxThenMin(retain, Subset(xs[2], ys[2]), 8, 8, msteps=1)
    stream_max_only = lambda epoch, rng: (b for b in stream(epoch, rng) if "forget" in b)  # noqa: E731
    stream_max_only.steps_per_epoch = 3
    trainer = Trainer(plan.model, plan.optimizer, num_classes=3, preprocess=Preprocess(mean, std), train_vars=plan.train_vars, loss=plan.loss,
                      teacher=plan.teacher, verbose=False)
    trainer.fit(epochs=1, stream=stream_max_only)
    after = predict_logits(plan.model, xs[2], Preprocess(mean, std))
    kl = lambda a: float(distill_kl(jnp.asarray(a), jnp.asarray(before), ctx.hparams.temperature))  # noqa: E731
    assert kl(before) == pytest.approx(0.0, abs=1e-6) and kl(after) > 1e-3
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(teacher, plan.teacher[0]))


def test_unknown_method_and_retrain_are_refused_with_one_line():
    from prunelora_keras.methods.prepare import prepare_method

    with pytest.raises(ValueError, match="unknown method 'nope'; registered: retrain, finetune"):
        methods.get("nope")
    with pytest.raises(UserError, match="exact baseline"):
        prepare_method("retrain", None)


def _linear(seed=0):
    """Flatten + one Dense: deterministic (training mode = inference mode), logits = x W + b."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(inputs)))


def _np_inputs(x, mean, std):
    return ((x.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)).reshape(len(x), -1)


def _np_distill_kl(s, t, temp):
    log_p_t, log_q = _np_log_softmax(t / temp), _np_log_softmax(s / temp)
    return float(np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_q), axis=-1)) * temp ** 2)


def _context(model, sets, retain, forget, mean=(0.5,) * 3, std=(0.25,) * 3, method="scrub"):
    from prunelora_keras.methods import MethodContext, Targets

    cfg = build_config("vit", "quick", sets=sets)
    return MethodContext(model=model, options=cfg.unlearn, hparams=cfg.methods[method], retain=retain, forget=forget,
                         num_classes=3, preprocess=Preprocess(mean, std), seed=0, targets=Targets(classifier="head"), epochs=1)


def test_scrub_max_step_raises_the_kl_by_the_amount_numpy_computes():
    """One max-step of the real plan (SGD, momentum 0.9, weight decay 5e-4, the schedule's first lr)
    from a student moved off the teacher: the KL on D_f must grow to what one SGD step on -KL gives
    in numpy (a flipped sign lowers it instead), and the step's loss is -KL before the step."""
    mean, std = (0.5,) * 3, (0.25,) * 3
    xs, ys = zip(*(_data(8, c, c) for c in range(3)))
    retain, forget = Subset(np.concatenate(xs[:2]), np.concatenate(ys[:2])), Subset(xs[2], ys[2])
    model = _linear()
    ctx = _context(model, ["scrub.lr=0.5", "scrub.msteps=1", "scrub.forget_batch=8"], retain, forget, mean, std)
    plan = methods.get("scrub").prepare(ctx)
    w0, b0 = (np.asarray(v, np.float64) for v in plan.teacher[0])
    rng = np.random.default_rng(3)
    w, b = w0 + rng.normal(0, 0.3, w0.shape), b0 + rng.normal(0, 0.3, b0.shape)
    model.get_layer("head").set_weights([w.astype(np.float32), b.astype(np.float32)])  # the student, off the teacher
    stream = plan.stream
    max_only = lambda epoch, rng: (p for p in stream(epoch, rng) if "forget" in p)  # noqa: E731
    max_only.steps_per_epoch = 1
    trainer = Trainer(plan.model, plan.optimizer, num_classes=3, preprocess=Preprocess(mean, std), train_vars=plan.train_vars, loss=plan.loss,
                      teacher=plan.teacher, verbose=False)
    (stats,) = trainer.fit(epochs=1, stream=max_only)

    h, temp = ctx.hparams, ctx.hparams.temperature
    x = _np_inputs(forget.x, mean, std)
    t = x @ w0 + b0
    kl_before = _np_distill_kl(x @ w + b, t, temp)
    q, p_t = np.exp(_np_log_softmax((x @ w + b) / temp)), np.exp(_np_log_softmax(t / temp))
    g_logits = -temp * (q - p_t) / len(x)  # d(-KL)/d(student logits) of T^2 * mean KL(p_t || softmax(s / T))
    lr, wd = h.lr, h.weight_decay  # first step: the momentum buffer is the gradient itself
    w1 = w - lr * (x.T @ g_logits + wd * w)
    b1 = b - lr * (g_logits.sum(0) + wd * b)
    kl_expected = _np_distill_kl(x @ w1 + b1, t, temp)
    kl_after = _np_distill_kl(predict_logits(plan.model, forget.x, Preprocess(mean, std)).astype(np.float64), t, temp)
    assert stats.loss == pytest.approx(-kl_before, rel=1e-4)
    assert kl_expected > 1.5 * kl_before  # the direction: away from the teacher
    assert kl_after == pytest.approx(kl_expected, rel=1e-3)  # and the size


def test_scrub_learning_rate_decays_at_the_reference_epochs_counted_in_the_streams_steps():
    """The plan's own optimiser, stepped as the loop steps it: per-step learning rates (read off the
    update of a gradient of 1, no momentum, no decay) against a hand-computed list. Epochs 1-2 have
    2 max-steps + 3 min-steps, epochs 3-4 3 min-steps: the switches sit at steps 5 and 13."""
    retain = Subset(np.zeros((10, 4, 4, 3), np.uint8), np.zeros(10, int))
    forget = Subset(np.zeros((3, 4, 4, 3), np.uint8), np.ones(3, int))
    base = ["scrub.lr=1.0", "scrub.msteps=2", "scrub.forget_batch=2", "unlearn.batch_size=4",
            "scrub.momentum=0", "scrub.weight_decay=0"]
    assert ScrubHParams().lr_decay_epochs == (3, 5, 9) and ScrubHParams().lr_decay_rate == 0.1
    cases = {("1,3", "0.1"): [1.0] * 5 + [0.1] * 5 + [0.1] * 3 + [0.01] * 3,
             ("2,2", "0.5"): [1.0] * 10 + [0.25] * 6,  # a repeated epoch decays twice, as np.sum(epoch > [2, 2])
             ("3,5,9", "0.1"): [1.0] * 13 + [0.1] * 3}  # the defaults: nothing changes before epoch 4
    for (epochs, rate), expected in cases.items():
        plan = methods.get("scrub").prepare(_context(_linear(), base + [f"scrub.lr_decay_epochs={epochs}",
                                                                        f"scrub.lr_decay_rate={rate}"],
                                                     retain, forget))
        lengths = [len(list(plan.stream(e, np.random.default_rng(e)))) for e in range(1, 5)]
        assert lengths == [plan.stream.epoch_steps(e) for e in range(1, 5)] == [5, 5, 3, 3]
        params = [np.ones(1, np.float32)]
        state, seen = plan.optimizer.init(params), []
        for _ in range(sum(lengths)):
            updates, state = plan.optimizer.update([np.ones(1, np.float32)], state, params)
            seen.append(-float(updates[0][0]))
        np.testing.assert_allclose(seen, expected, rtol=1e-6, err_msg=str(epochs))
    assert "lr 1.0 x0.1 after epochs 3, 5, 9" in plan.description  # the defaults' case, the last one


def test_scrub_decay_options_are_checked():
    from prunelora_keras.methods.hparams import check_hparams

    with pytest.raises(ValueError, match=r"scrub.lr_decay_epochs = \(0, 5\) is out of range: must be >= 1"):
        check_hparams(ScrubHParams, {"lr_decay_epochs": [0, 5]}, "scrub.")
    with pytest.raises(ValueError, match="scrub.lr_decay_rate = 0.0 is out of range: must be > 0"):
        check_hparams(ScrubHParams, {"lr_decay_rate": 0.0}, "scrub.")
    with pytest.raises(ValueError, match="scrub.lr_decay_epochs must be a list of int"):
        check_hparams(ScrubHParams, {"lr_decay_epochs": 3}, "scrub.")
    assert check_hparams(ScrubHParams, {"lr_decay_epochs": []}).lr_decay_epochs == ()  # no decay


def test_neggrad_plus_ascends_on_d_f_and_descends_on_d_r_end_to_end():
    """The real plan on the real loop: the first step's loss is alpha CE_r - (1 - alpha) CE_f in numpy
    (one step per epoch: all of D_r beside all of D_f), and after a few steps CE on D_f has risen and CE
    on D_r fallen (with the ascent's sign flipped both fall)."""
    mean, std = (0.5,) * 3, (0.25,) * 3
    xs, ys = zip(*(_data(12, c, 10 + c) for c in range(3)))
    retain, forget = Subset(np.concatenate(xs[:2]), np.concatenate(ys[:2])), Subset(xs[2], ys[2])
    model = _linear(1)
    alpha = 0.5
    plan = methods.get("neggrad_plus").prepare(_context(
        model, [f"neggrad_plus.alpha={alpha}", "neggrad_plus.lr=0.05", "unlearn.batch_size=24",
                "neggrad_plus.forget_batch=12"], retain, forget, mean, std, method="neggrad_plus"))
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("head").get_weights())

    def ce(x, y, w, b):
        return float(-_np_log_softmax(_np_inputs(x, mean, std) @ w + b)[np.arange(len(y)), y].mean())

    ce_r, ce_f = ce(retain.x, retain.y, w, b), ce(forget.x, forget.y, w, b)
    trainer = Trainer(plan.model, plan.optimizer, num_classes=3, preprocess=Preprocess(mean, std), train_vars=plan.train_vars, loss=plan.loss,
                      verbose=False)
    history = trainer.fit(epochs=5, stream=plan.stream)
    assert plan.stream.steps_per_epoch == 1 and history[0].loss == pytest.approx(alpha * ce_r - (1 - alpha) * ce_f,
                                                                                  rel=1e-4)
    w5, b5 = (np.asarray(v, np.float64) for v in model.get_layer("head").get_weights())
    assert ce(forget.x, forget.y, w5, b5) > ce_f + 0.5 and ce(retain.x, retain.y, w5, b5) < ce_r - 0.1


def test_neggrad_plus_stream_draws_the_forget_permutation_first():
    retain = Subset(np.arange(10)[:, None], np.zeros(10, int))
    forget = Subset(np.arange(100, 106)[:, None], np.ones(6, int))
    out = list(RetainWithForget(retain, forget, batch_size=10, forget_batch=6)(1, np.random.default_rng(5)))
    rng = np.random.default_rng(5)
    first, second = rng.permutation(6), rng.permutation(10)
    assert np.asarray(out[0]["forget"][0]).ravel().tolist() == (100 + first).tolist()
    assert np.asarray(out[0]["retain"][0]).ravel().tolist() == second.tolist()


def test_the_step_key_does_not_drive_dropout_the_seed_generator_state_does():
    from prunelora_keras.training.step import StepConsts, StepSpec, TrainState, cross_entropy_loss, train_step

    model = _tiny()
    n = len(model.trainable_variables)
    opt = optax.sgd(0.0)
    spec = StepSpec(model, opt, cross_entropy_loss, 3, tuple(range(n)), (), (None,) * n,
                    Preprocess((0.5,) * 3, (0.25,) * 3))
    train = [v.value for v in model.trainable_variables]
    nt = [v.value for v in model.non_trainable_variables]
    x, y = _data(16, 1, 0)
    batch = {"train": (jnp.asarray(x), jnp.asarray(y, jnp.int32))}
    run = lambda nt, seed: train_step(spec, TrainState(train, nt, opt.init(train)), StepConsts([]), batch,  # noqa: E731
                                      jax.random.key(seed))
    s0, m0 = run(nt, 0)
    _, m1 = run(nt, 1)
    _, m2 = run(s0.non_trainable, 0)  # the seed generator's state advanced by one call
    assert float(m0["loss"]) == float(m1["loss"]) and float(m0["loss"]) != float(m2["loss"])
