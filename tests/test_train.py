import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import ModelConfig, build_config
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.models import build_model
from prunelora_keras.evaluation.metrics import cross_entropy as per_sample_losses
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.inference import accuracy, predict_logits
from prunelora_keras.training.optim import make_optimizer, make_schedule
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.data.augment import Preprocess

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = np.clip(rng.normal(60 + 60 * y[:, None, None, None], 20, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    return x, y


def dense_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def test_sgd_matches_torch_semantics():
    """torch.optim.SGD(lr, momentum, weight_decay): g += wd * w; buf = m * buf + g; w -= lr * buf."""
    opt = make_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01), 10)
    w = np.array([1.0, -2.0], np.float32)
    state = opt.init(w)
    ref_w, buf = w.astype(np.float64), np.zeros(2)
    for g in ([0.5, 0.1], [-0.3, 0.2], [0.1, 0.1]):
        g = np.asarray(g, np.float32)
        updates, state = opt.update(g, state, w)
        w = w + np.asarray(updates)
        grad = g + 0.01 * ref_w
        buf = 0.9 * buf + grad
        ref_w = ref_w - 0.1 * buf
        np.testing.assert_allclose(w, ref_w, rtol=1e-6)


def test_adamw_decays_matrices_only():
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5), 10)
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones((2,), np.float32)}
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["kernel"]), -0.1 * 0.5, rtol=1e-6)  # decoupled decay only
    np.testing.assert_array_equal(np.asarray(updates["bias"]), 0.0)


def test_schedules():
    sched = make_schedule(TrainConfig(lr=1.0, schedule="warmup_cosine", warmup_steps=10), 110)
    assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(1.0) and float(sched(110)) == pytest.approx(0.0)
    cos = make_schedule(TrainConfig(lr=2.0, schedule="cosine"), 100)
    assert float(cos(50)) == pytest.approx(1.0, rel=1e-5)


def test_trainer_learns_and_trains_only_the_chosen_subset():
    x, y = tiny_data()
    model = dense_model()
    before = {v.path: np.array(v.numpy()) for v in model.variables}
    head = model.get_layer("head")
    trainer = Trainer(model, make_optimizer(TrainConfig(optimizer="adam", lr=0.05), 40), num_classes=3, preprocess=Preprocess(MEAN, STD),
                      train_vars=head.trainable_variables)
    assert trainer.trainable_count == 16 * 3 + 3
    history = trainer.fit(x, y, epochs=8, batch_size=16)
    assert history[-1].loss < history[0].loss
    assert history[0].compile_s > 0 and all(h.compile_s == 0 for h in history[1:])
    assert history[0].peak_mem_bytes > 0 and history[0].mem_kind in ("device", "host_rss")
    after = {v.path: np.array(v.numpy()) for v in model.variables}
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        if path.startswith("head/"):
            assert changed, path
        elif path.startswith("bn/moving"):
            assert changed, "BatchNorm running statistics update under the 'update' policy"
        else:
            assert not changed, f"{path} was not chosen for training but changed"


def test_bn_freeze_policy_keeps_running_statistics():
    x, y = tiny_data()
    model = dense_model()
    set_bn_policy(model, "freeze")
    moving = np.array(model.get_layer("bn").moving_mean.numpy())
    Trainer(model, make_optimizer(TrainConfig(optimizer="adam", lr=0.01), 10), num_classes=3, preprocess=Preprocess(MEAN, STD)).fit(x, y, 1, 16)
    np.testing.assert_array_equal(model.get_layer("bn").moving_mean.numpy(), moving)
    assert model.get_layer("bn").gamma.path not in [v.path for v in model.trainable_variables]


def test_masks_are_enforced_through_adam_with_weight_decay():
    x, y = tiny_data()
    model = dense_model()
    kernel = model.get_layer("hidden").kernel
    mask = np.ones(kernel.shape, np.float32)
    mask[:, ::2] = 0.0
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=0.05, weight_decay=0.1), 20)
    Trainer(model, opt, num_classes=3, preprocess=Preprocess(MEAN, STD), masks={kernel.path: mask}).fit(x, y, epochs=7, batch_size=16)  # 21 steps
    w = np.asarray(kernel.numpy())
    assert np.all(w[:, ::2] == 0.0) and np.all(w[:, 1::2] != 0.0)


def test_same_seed_same_result():
    x, y = tiny_data()
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = build_model(ModelConfig("vit", patch_size=2, dim=16, depth=1, heads=2, mlp_dim=32), 3, (8, 8, 3))
        cfg = TrainConfig(optimizer="adam", lr=0.01, augment=["crop", "flip", "mixup"])
        t = Trainer(model, make_optimizer(cfg, 6), num_classes=3, preprocess=Preprocess(MEAN, STD), augment=cfg.augment, seed=3)
        t.fit(x, y, 2, 16)
        runs.append(predict_logits(model, x, Preprocess(MEAN, STD)))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_predict_logits_pads_the_last_batch():
    x, _ = tiny_data(n=23)
    model = dense_model()
    logits = predict_logits(model, x, Preprocess(MEAN, STD), batch_size=10)
    direct = keras.ops.convert_to_numpy(model((x.astype("float32") / 255 - 0.5) / 0.25, training=False))
    assert logits.shape == (23, 3)
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)


def test_losses_and_accuracy_against_independent_formula():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1000.0, -1000.0, 0.0]])
    labels = np.array([0, 2, 1])
    p = np.exp(logits[:2] - logits[:2].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -np.log(p[np.arange(2), labels[:2]])
    losses = per_sample_losses(logits, labels)
    np.testing.assert_allclose(losses[:2], expected, rtol=1e-12)
    assert losses[2] == pytest.approx(2000.0)  # stable for extreme logits
    assert accuracy(logits, labels) == pytest.approx(1 / 3)


def test_one_compiled_evaluation_serves_models_of_one_architecture():
    from prunelora_keras.training import loop as train
    from prunelora_keras.training.caches import COMPILED

    cfg = build_config("vit", "quick", sets=["model.dim=16", "model.depth=1", "model.heads=2", "model.mlp_dim=16"])
    a = build_model(cfg.model, 10, (8, 8, 3))
    b = build_model(cfg.model, 10, (8, 8, 3))
    rng = np.random.default_rng(0)
    for v in b.trainable_variables:  # other weights, same architecture
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))
    assert train.architecture_key(a) == train.architecture_key(b)
    x = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    before = COMPILED.count("eval")
    la, lb = predict_logits(a, x, Preprocess(MEAN, STD), batch_size=4), predict_logits(b, x, Preprocess(MEAN, STD), batch_size=4)
    assert COMPILED.count("eval") <= before + 1
    expected = keras.ops.convert_to_numpy(b(((x / 255.0) - np.array(MEAN)) / np.array(STD), training=False))
    np.testing.assert_allclose(lb, expected, rtol=1e-5, atol=1e-5)  # b's weights, not a's
    assert not np.allclose(la, lb)
    other = build_model(build_config("vit", "quick", sets=["model.dim=16", "model.depth=2", "model.heads=2",
                                                           "model.mlp_dim=16"]).model, 10, (8, 8, 3))
    assert train.architecture_key(other) != train.architecture_key(a)
