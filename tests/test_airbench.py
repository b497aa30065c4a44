"""airbench94 and its recipe (the testbed preset): the whitening stem set from data, the optimiser against
PyTorch's SGD as airbench drives it, the triangle rate, the lookahead, the whitening bias's freeze, the
alternating flip and reflected translation, label smoothing, test-time views, LoRA and pruning on the
network, and a tiny run of the command."""

import json

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

from prunelora_keras.data.augment import Preprocess, random_crop, smooth_targets
from prunelora_keras.data.batches import AlternatingFlip, Rows
from prunelora_keras.experiment.config import build_config
from prunelora_keras.errors import UserError
from prunelora_keras.models import airbench, build_model
from prunelora_keras.models.airbench import PatchWhitening, init_whitening, whitening_kernel
from prunelora_keras.training.inference import predict_logits, tta_logits
from prunelora_keras.training.optim import lookahead_ema, make_optimizer, make_schedule, param_roles
from prunelora_keras.training.recipe import TrainConfig, recipe_identity

TINY = (8, 16, 16)


def test_whitening_kernel_whitens_the_patches_it_was_estimated_on():
    """Independent of the construction: the stem's outputs on the patches have second moment
    diag(l / (l + eps)) with l the patch moment's eigenvalues in decreasing order, and the second
    twelve filters are the negated first twelve."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(3, 3))
    x = (rng.normal(size=(40, 10, 10, 3)) @ mixing).astype(np.float32)  # correlated channels
    kernel = whitening_kernel(x, eps=5e-4)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (2, 2), axis=(1, 2))  # n,9,9,c,2,2
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)  # (row, col, channel): the kernel's HWI order
    eigenvalues = np.sort(np.linalg.eigvalsh(patches.T @ patches / len(patches)))[::-1]
    out = patches @ kernel.reshape(12, 24).astype(np.float64)
    moment = out[:, :12].T @ out[:, :12] / len(out)
    np.testing.assert_allclose(moment, np.diag(eigenvalues / (eigenvalues + 5e-4)), atol=2e-5)
    np.testing.assert_array_equal(out[:, 12:], -out[:, :12])
    layer = PatchWhitening(24, 2, use_bias=True)  # the layer computes the same map
    layer.build((None, 10, 10, 3))
    layer.kernel.assign(kernel)
    got = keras.ops.convert_to_numpy(layer(x)).reshape(-1, 24)
    np.testing.assert_allclose(got, out, rtol=1e-4, atol=1e-4)


def test_the_whitening_kernel_is_set_from_the_first_images_and_stays_frozen_through_a_keras_file(tmp_path):
    model = airbench(10, widths=TINY, seed=0)
    x = np.random.default_rng(1).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    pre = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    assert init_whitening(model, x, pre, limit=10)
    # 10 of 30, spread over the set (a class-sorted folder must not give one class's patches)
    expected = whitening_kernel(np.asarray(pre(x[[0, 3, 6, 9, 12, 16, 19, 22, 25, 29]])))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("whiten").kernel), expected, rtol=1e-6)
    assert "whiten/kernel" not in [v.path for v in model.trainable_variables]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert "whiten/kernel" not in [v.path for v in loaded.trainable_variables]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.get_layer("whiten").kernel), expected, rtol=1e-6)
    assert not init_whitening(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), x)  # nothing to set
    roles = dict(zip([v.path for v in model.trainable_variables], param_roles(model, model.trainable_variables)))
    assert roles["whiten/bias"] == "whiten_bias" and roles["group2_bn1/beta"] == "norm"
    assert roles["group2_conv1/kernel"] == roles["head/kernel"] == "weight"


def _airbench_like_torch(values, grads_fn, lr, momentum, coef, scale, total, spe, freeze_epochs, every, decay, power):
    """airbench94's training loop (legacy/airbench94.py) on named tensors, in PyTorch."""
    import torch

    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
    groups = [dict(params=[params["beta"]], lr=lr * scale, weight_decay=coef / scale),
              dict(params=[params["w"], params["whiten_bias"]], lr=lr, weight_decay=coef)]
    opt = torch.optim.SGD(groups, momentum=momentum, nesterov=True)
    warm = int(total * 0.23)

    def get_lr(step):
        if step < warm:
            return 0.2 * (1 - step / warm) + step / warm
        frac = (step - warm) / (total - warm)
        return (1 - frac) + 0.07 * frac

    sched = torch.optim.lr_scheduler.LambdaLR(opt, get_lr)
    ema = {k: p.detach().clone() for k, p in params.items()}
    alpha = decay * (torch.arange(total + 1, dtype=torch.float64) / total) ** power
    step = 0
    for epoch in range(total // spe):
        params["whiten_bias"].requires_grad = epoch < freeze_epochs
        for _ in range(spe):
            opt.zero_grad(set_to_none=True)
            for k, g in grads_fn({k: p.detach().numpy() for k, p in params.items()}).items():
                if params[k].requires_grad:
                    params[k].grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                if step % every == 0:
                    for k, p in params.items():
                        ema[k].lerp_(p, 1 - alpha[step].item())
                        p.copy_(ema[k])
                if step >= total:
                    for k, p in params.items():
                        p.copy_(ema[k])
    return {k: p.detach().numpy() for k, p in params.items()}


def test_the_airbench_optimiser_matches_airbench94s_pytorch_loop():
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 && pip install -e '.[torch]'")
    rng = np.random.default_rng(0)
    values = {"w": rng.normal(size=(3, 2)), "beta": rng.normal(size=(2,)), "whiten_bias": rng.normal(size=(2,))}
    targets = {k: rng.normal(size=v.shape) for k, v in values.items()}
    grads_fn = lambda p: {k: 2.0 * (p[k] - targets[k]) * (1 + p[k] ** 2) for k in p}  # noqa: E731  (not linear)
    total, spe = 24, 4
    recipe = TrainConfig(epochs=total // spe, lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01,
                         norm_lr_scale=8.0, schedule="triangle", lookahead_every=5, lookahead_decay=0.95 ** 5,
                         lookahead_power=3.0, whiten_bias_epochs=2)
    expected = _airbench_like_torch(values, grads_fn, 0.05, 0.85, 0.01, 8.0, total, spe, 2, 5, 0.95 ** 5, 3.0)
    names = ["w", "beta", "whiten_bias"]
    with jax.enable_x64():
        tx = make_optimizer(recipe, total, roles=["weight", "norm", "whiten_bias"], steps_per_epoch=spe)
        params = [jnp.asarray(values[k]) for k in names]
        state = tx.init(params)
        for _ in range(total):
            g = grads_fn({k: np.asarray(p) for k, p in zip(names, params)})
            updates, state = tx.update([jnp.asarray(g[k]) for k in names], state, params)
            params = optax.apply_updates(params, updates)
        for k, p in zip(names, params):
            np.testing.assert_allclose(np.asarray(p), expected[k], rtol=1e-6, atol=1e-9, err_msg=k)  # float32 schedule values


def test_the_triangle_rate_is_airbench94s():
    cfg = TrainConfig(lr=2.0, schedule="triangle", peak_fraction=0.23, start_factor=0.2, end_factor=0.07)
    total = 480
    schedule = make_schedule(cfg, total)
    peak = int(total * 0.23)
    expected = np.interp(np.arange(total), [0, peak, total], [0.2, 1.0, 0.07]) * 2.0  # airbench's triangle()
    np.testing.assert_allclose([float(schedule(i)) for i in range(total)], expected, rtol=1e-6)


def test_lookahead_moves_to_the_ema_every_n_steps_and_takes_it_at_the_end():
    """numpy: plain SGD with lr 1 on a constant gradient, the EMA updated every 2 steps."""
    total, every, decay, power = 7, 2, 0.6, 1.0
    tx = optax.chain(optax.sgd(1.0), lookahead_ema(every, decay, power, total))
    params, state = [jnp.zeros(2)], None
    state = tx.init(params)
    w, ema = np.zeros(2), np.zeros(2)
    for t in range(1, total + 1):
        updates, state = tx.update([jnp.array([1.0, -2.0])], state, params)
        params = optax.apply_updates(params, updates)
        w = w - np.array([1.0, -2.0])
        if t % every == 0:
            a = decay * (t / total) ** power
            ema = ema + (1 - a) * (w - ema)
            w = ema.copy()
        if t == total:
            w = ema.copy()
        np.testing.assert_allclose(np.asarray(params[0]), w, rtol=1e-6, err_msg=str(t))


def test_recipes_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="roles"):
        make_optimizer(TrainConfig(norm_lr_scale=4.0), 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_optimizer(TrainConfig(whiten_bias_epochs=1), 10, roles=["weight"])
    for sets, message in ((["pretrain.augment=flip,altflip"], "exclude each other"),
                          (["pretrain.label_smoothing=1"], "label_smoothing"),
                          (["pretrain.optimizer=adam", "pretrain.nesterov=true"], "apply to optimizer sgd"),
                          (["pretrain.peak_fraction=1"], "triangle"), (["model.widths=8,16"], "three channel"),
                          (["eval.tta=3"], "tta")):
        with pytest.raises(UserError, match=message):
            build_config("airbench", "testbed", sets=sets)


def test_recipe_keys_ignore_the_new_fields_at_their_defaults():
    assert recipe_identity(TrainConfig()) == recipe_identity(TrainConfig(lookahead_decay=0.5, end_factor=0.3))
    assert "precision" not in recipe_identity(TrainConfig())
    assert recipe_identity(TrainConfig(nesterov=True)) != recipe_identity(TrainConfig())
    assert recipe_identity(TrainConfig(schedule="triangle")) != recipe_identity(TrainConfig(schedule="triangle",
                                                                                           end_factor=0.3))


def test_alternating_flip_shows_each_image_mirrored_every_other_epoch():
    x = np.random.default_rng(0).integers(0, 256, (400, 4, 5, 3), dtype=np.uint8)
    epochs = [np.asarray(Rows(AlternatingFlip(x, 3, e), np.arange(400))) for e in range(1, 5)]
    mirrored = [np.all(v == x[:, :, ::-1], axis=(1, 2, 3)) for v in epochs]
    kept = [np.all(v == x, axis=(1, 2, 3)) for v in epochs]
    assert all(np.all(m | k) for m, k in zip(mirrored, kept))  # every image is one or the other
    assert 150 < mirrored[0].sum() < 250  # a random half starts mirrored
    assert np.array_equal(mirrored[0], ~mirrored[1]) and np.array_equal(mirrored[0], mirrored[2])
    assert np.array_equal(epochs[3], np.asarray(AlternatingFlip(x, 3, 4)))  # a function of (seed, epoch)
    assert not np.array_equal(mirrored[0], np.all(np.asarray(AlternatingFlip(x, 4, 1)) == x[:, :, ::-1], axis=(1, 2, 3)))


def test_translate_is_a_reflect_padded_two_pixel_crop():
    x = np.random.default_rng(0).random((16, 6, 7, 3)).astype(np.float32)
    out = np.asarray(random_crop(jax.random.key(0), jnp.asarray(x), pad=2, mode="reflect"))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    offsets = set()
    for i in range(16):
        hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(out[i], padded[i, a:a + 6, b:b + 7])]
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) > 3


def test_label_smoothing_is_torchs():
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    targets = np.asarray(smooth_targets(jnp.asarray(labels), 4, 0.2))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -(0.8 * log_p[np.arange(5), labels] + 0.2 * log_p.mean(1))  # torch's formula
    np.testing.assert_allclose(np.asarray(optax.softmax_cross_entropy(jnp.asarray(logits), targets)), expected,
                               rtol=1e-5)


def test_tta_averages_the_mirrored_and_translated_views():
    model = airbench(10, widths=TINY, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    pre = Preprocess(mean=(0.5,), std=(0.25,))
    f = lambda v: predict_logits(model, np.ascontiguousarray(v), pre, 4)  # noqa: E731
    reflect = lambda i, n: np.abs(i) if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    rows = np.array([reflect(i - 1, 32) for i in range(32)]), np.array([reflect(i + 1, 32) for i in range(32)])
    up_left, down_right = x[:, rows[0]][:, :, rows[0]], x[:, rows[1]][:, :, rows[1]]
    mirror = lambda a: a[:, :, ::-1]  # noqa: E731
    expected = (0.5 * (f(x) + f(mirror(x))) / 2 + 0.5 * ((f(up_left) + f(mirror(up_left))) / 2
                                                          + (f(down_right) + f(mirror(down_right))) / 2) / 2)
    np.testing.assert_allclose(tta_logits(model, x, pre, 4, level=2), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tta_logits(model, x, pre, 4, level=1), (f(x) + f(mirror(x))) / 2, rtol=1e-5, atol=1e-5)


def test_lora_and_pruning_work_on_airbench():
    from prunelora_keras.experiment.paradigms import build_recipe
    from prunelora_keras.models.lora import lora_layer_names

    cfg = build_config("airbench", "testbed", sets=["model.widths=8,16,32", "pruned_lora.mode=persistent"])
    model = build_model(cfg.model, 10, (32, 32, 3))
    # convolutions that widen: half of their outputs start as an identity (norm 1), half random (norm < 1)
    kernels = {n: keras.ops.convert_to_numpy(model.get_layer(n).kernel) for n in ("group2_conv1", "group3_conv1")}
    plan = build_recipe("pruned_lora", model, cfg)
    wrapped = sorted(lora_layer_names(plan.model))
    assert wrapped == sorted([f"group{g}_conv{i}" for g in (1, 2, 3) for i in (1, 2)] + ["head"])
    assert sorted(plan.masks) and all("whiten" not in p for p in plan.masks)
    assert {v.path.split("/")[-1] for v in plan.train_vars} == {"lora_a", "lora_b"}
    for name, kernel in kernels.items():  # the half of the output channels with the smallest L2 norms
        norms = np.sqrt((kernel ** 2).reshape(-1, kernel.shape[-1]).sum(0))
        mask = keras.ops.convert_to_numpy(plan.model.get_layer(name).unit_mask)
        assert mask.sum() == kernel.shape[-1] // 2
        assert set(np.flatnonzero(mask == 0)) == set(np.argsort(norms, kind="stable")[:kernel.shape[-1] // 2])


def _tiny_data_and_recipe(n: int, **recipe: float):
    """n random 32x32 images of 10 classes as a Dataset, and an airbench-like recipe of 3 epochs."""
    from prunelora_keras.data.datasets import Dataset

    rng = np.random.default_rng(n)
    x, y = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)
    ds = Dataset("t", x, y, x[:4], y[:4], tuple(map(str, range(10))), (0.5,) * 3, (0.25,) * 3)
    return x, y, ds, TrainConfig(epochs=3, momentum=0.85, nesterov=True, weight_decay=1e-3, norm_lr_scale=4.0,
                                 schedule="triangle", label_smoothing=0.2, augment=["altflip", "translate"],
                                 whiten_bias_epochs=1, **recipe)


def test_the_whitening_bias_trains_its_epochs_and_then_stays(tmp_path):
    from prunelora_keras.training.trainers import scratch_trainer

    x, y, ds, recipe = _tiny_data_and_recipe(32, lr=0.5)  # no lookahead: it moves every weight, the frozen bias too
    model = airbench(10, widths=TINY, seed=0)
    init_whitening(model, x, ds.preprocess)
    kernel = keras.ops.convert_to_numpy(model.get_layer("whiten").kernel).copy()
    trainer = scratch_trainer(model, recipe, 3 * 2, ds, 0, "t")
    assert trainer.spec.label_smoothing == 0.2 and trainer.spec.augment == ("translate",)  # altflip: the stream's
    biases = []
    trainer.fit(x, y, 3, 16, on_epoch_end=lambda s: biases.append(
        keras.ops.convert_to_numpy(model.get_layer("whiten").bias).copy()))
    assert not np.array_equal(biases[0], 0) and np.array_equal(biases[0], biases[1]) and np.array_equal(biases[1], biases[2])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("whiten").kernel), kernel)
    with pytest.raises(ValueError, match="altflip"):
        trainer.fit(stream=lambda epoch, rng: iter(()))


def test_a_tiny_testbed_run_of_the_command(tmp_path, monkeypatch):
    """The preset end to end on a 32x32 image folder: original (with its TTA accuracy), Retrain, two
    paradigms and the two methods that change the network's head or search its inputs (the shadow class,
    AMUN's PGD), every row evaluated, RMIA with Retrain as the reference."""
    from prunelora_keras.experiment.run import main
    from tests.test_image_cache import _folder

    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", classes=3, per_class=16, size=32)
    argv = ["--model", "airbench", "--preset", "testbed", "--dataset", f"folder:{root}", "--forget-class", "1",
            "--paradigms", "retrain,finetune,pruned_lora,boundary_expanding,amun", "--epochs", "1",
            "--set", "pretrain.epochs=2", "--set", "amun.steps=3",
            "--set", "model.widths=8,16,16", "--set", "data.batch_size=16", "--set", "eval.relearn_max_steps=4",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["paradigm"] for r in results["rows"]] == ["retrain", "finetune", "pruned_lora", "boundary_expanding",
                                                        "amun"]
    assert all(r["status"] == "ok" for r in results["rows"])
    assert all(0 <= r["MIA_rmia_auc"] <= 100 for r in results["rows"][1:]) and "MIA_rmia_auc" not in results["rows"][0]
    assert 0 <= results["original"]["test_acc_tta"] <= 100
    assert "test with TTA" in (tmp_path / "run" / "results.md").read_text()


def test_random_forgetting_says_what_retrains_ua_is():
    from prunelora_keras.experiment.terminal import closing_lines

    rows = [{"paradigm": "retrain", "epochs": 10, "avg_gap": 0.0, "UA": 5.4},
            {"paradigm": "finetune", "epochs": 10, "avg_gap": 2.0, "UA": 3.0}]
    text = closing_lines({"rows": rows, "data": {"forgetting": "a random 10% of the training set"},
                          "config": {"model": {"name": "airbench"}, "data": {"forget_fraction": 0.1}}})
    assert "Retrain's own UA is its error on D_f, 5.40%" in text and "Avg. Gap to Retrain is the ranking" in text
    class_wise = closing_lines({"rows": rows, "data": {}, "config": {"data": {"forget_fraction": 0.0}}})
    assert "Random forgetting" not in class_wise


def test_the_airbench_recipe_resumes_exactly(tmp_path):
    """The lookahead's EMA, the freeze's count and the alternating flip survive a save and a resume."""
    from prunelora_keras.training import checkpoint
    from prunelora_keras.training.trainers import scratch_trainer

    x, y, ds, recipe = _tiny_data_and_recipe(24, lr=0.3, lookahead_every=2)

    def trainer():
        keras.utils.set_random_seed(0)
        model = airbench(10, widths=TINY, seed=0)
        init_whitening(model, x, ds.preprocess)
        return scratch_trainer(model, recipe, 3 * 2, ds, 0, "t")

    straight = trainer()
    straight.fit(x, y, 3, 12)
    first = trainer()
    first.fit(x, y, 1, 12)
    checkpoint.save_state(tmp_path / "s.npz", first, {"epoch": 1})
    resumed = trainer()
    checkpoint.load_state(tmp_path / "s.npz", resumed)
    resumed.fit(x, y, 2, 12, first_epoch=2)
    for a, b in zip(jax.tree_util.tree_leaves(straight.state()), jax.tree_util.tree_leaves(resumed.state())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_run_seed_decides_the_network():
    cfg = build_config("airbench", "testbed", sets=["model.widths=8,16,16"])

    def weights(seed):
        keras.utils.set_random_seed(seed)
        return [keras.ops.convert_to_numpy(w) for w in build_model(cfg.model, 10, (32, 32, 3)).weights]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    differ = [x.shape for x, y in zip(a, c) if not np.array_equal(x, y)]
    assert (3, 3, 8, 16) in differ and (16, 10) in differ  # group2_conv1 beyond its identity part; the head


def test_setting_trainable_never_makes_the_whitening_kernel_trainable():
    model = airbench(10, widths=TINY, seed=0)
    for layer in model.layers:
        layer.trainable = False
        layer.trainable = True
    model.trainable = True
    assert "whiten/kernel" not in [v.path for v in model.trainable_variables]


def test_a_scratch_pool_whitens_each_member_on_its_own_images():
    """U-LiRA's shadows train on different halves: each member's stem comes from its own rows."""
    import prunelora_keras as plk

    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10
    pre = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3)
    rows = [np.arange(0, 40, 2), np.arange(1, 40, 2)]
    pool = plk.scratch_pool(lambda seed: airbench(10, widths=TINY, seed=seed), TrainConfig(epochs=1, momentum=0.0),
                            x, y, 8, 10, pre, seeds=[0, 1], rows=rows, verbose=False)
    index = [v.path for v in airbench(10, widths=TINY, seed=0).non_trainable_variables].index("whiten/kernel")
    kernels = np.asarray(pool.state().non_trainable[index])  # stacked over the members
    for kernel, r in zip(kernels, rows):
        np.testing.assert_allclose(kernel, whitening_kernel(np.asarray(pre(x[r]))), rtol=1e-5, atol=1e-6)
    assert not np.allclose(kernels[0], kernels[1])
