"""Pools (ensemble.PoolTrainer, pools.py): K models trained at once are the K models the single loop
trains one at a time with the same seeds, in every mode; state saves and resumes; the K axis
shards over devices."""

import json
import subprocess
import sys

import keras
import numpy as np
import optax
import pytest

from conftest import REPO, clean_env
from prunelora_keras.data.augment import Preprocess
from prunelora_keras import methods
from prunelora_keras.api.library import copy_model, find_targets, unlearn_options
from prunelora_keras.training.checkpoint import load_state, save_state
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.data.datasets import Subset
from prunelora_keras.training.pool_trainer import PoolTrainer, choose_mode, member_seeds
from prunelora_keras.api.pools import method_pool, pool_bytes, scratch_pool
from prunelora_keras.training.loop import ArrayStream, Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.methods.prepare import prepare_method

MEAN, STD = (127.0,) * 3, (64.0,) * 3
RECIPE = TrainConfig(epochs=2, optimizer="adam", lr=1e-2, augment=["crop", "flip"])


def _cnn(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h)))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 200, (n, 8, 8, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y] = 255
    return x, y


def _single(seed, x, y, epochs=2, batch=16):
    set_bn_policy(model := _cnn(seed), "update")
    steps = -(-len(y) // batch) * RECIPE.epochs
    trainer = Trainer(model, make_optimizer(RECIPE, steps), num_classes=3, preprocess=Preprocess(MEAN, STD), augment=RECIPE.augment, seed=seed,
                      verbose=False)
    trainer.fit(x, y, epochs, batch)
    return [np.asarray(v) for v in trainer.train_values + trainer.non_trainable_values]


def _pool(seeds, x, y, mode):
    return scratch_pool(_cnn, RECIPE, x, y, 16, 3, Preprocess(MEAN, STD), seeds, mode=mode, verbose=False)


@pytest.mark.parametrize("mode", ["vmap", "map", "loop"])
def test_a_pool_reproduces_the_single_loop_member_by_member(mode):
    x, y = _data()
    seeds = [3, 11, 5]
    pool = _pool(seeds, x, y, mode)
    history = pool.fit(2)
    assert pool.mode == mode and [h.epoch for h in history] == [1, 2]
    assert np.asarray(pool.state().train[0]).shape[0] == 3  # stacked: leading K axis
    for k, seed in enumerate(seeds):  # 3 steps x 2 epochs of Adam, dropout, crop, flip, BatchNorm
        trained, non_trainable = pool.member_values(k)
        for got, want in zip([np.asarray(v) for v in trained + non_trainable], _single(seed, x, y)):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # << one Adam step (1e-2)
    logits = pool.logits(x, batch_size=16)
    assert logits.shape == (3, len(x), 3)
    assert not np.allclose(logits[0], logits[1])  # different seeds, different models


def test_pool_state_saves_and_resumes_to_the_uninterrupted_result(tmp_path):
    x, y = _data()
    seeds = [1, 2]
    whole = _pool(seeds, x, y, "loop")
    whole.fit(2)
    first = _pool(seeds, x, y, "loop")
    first.fit(1)
    save_state(tmp_path / "pool.npz", first, {"epoch": 1})
    resumed = _pool(seeds, x, y, "vmap")  # another mode reads the same stacked file
    load_state(tmp_path / "pool.npz", resumed)
    resumed.fit(1, first_epoch=2)
    for a, b in zip(resumed.state().train, whole.state().train):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_method_pools_share_frozen_values_and_match_single_runs():
    """A LoRA pool: adapters differ per seed, the original's frozen weights are held once; member k
    is ``prepare_method`` with seed k trained alone."""
    x, y = _data(48)
    model = _cnn(0)
    Trainer(model, optax.adam(1e-2), num_classes=3, preprocess=Preprocess(MEAN, STD), verbose=False).fit(x, y, 3, 16)
    retain, forget = Subset(x[y != 2], y[y != 2]), Subset(x[y == 2], y[y == 2])
    opts, hparams = unlearn_options("lora", batch_size=8, rank=2)
    targets = find_targets(model).targets

    def ctx(seed):  # built as the experiment builds a run of seed ``seed`` (dropout's seed generator included)
        keras.utils.set_random_seed(seed)
        return methods.MethodContext(model=copy_model(model), options=opts, hparams=hparams, retain=retain,
                                     forget=forget, num_classes=3, preprocess=Preprocess(MEAN, STD), seed=seed, targets=targets,
                                     epochs=1)

    seeds = member_seeds(0, "unlearn", 2)
    pool = method_pool("lora", ctx, seeds, mode="vmap", verbose=False)
    assert not pool.frozen_stacked and pool.frozen_values  # the frozen base: once, not per member
    pool.fit(1)
    for k, seed in enumerate(seeds):
        prepared = prepare_method("lora", ctx(seed), prefix_cache="off", verbose=False)
        prepared.trainer.verbose = False
        prepared.fit(1, 8)
        want = [np.asarray(v) for v in prepared.trainer.train_values]
        got = [np.asarray(v[k]) for v in pool.state().train]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    a0, a1 = (np.asarray(v) for v in pool.state().train[0])
    assert not np.allclose(a0, a1)  # adapter init differs per seed


def test_unlearn_pool_member_is_plk_unlearn_of_that_seed():
    """The library's pool on a user's model: member k is ``plk.unlearn(..., seed=seeds[k])``."""
    import prunelora_keras as plk

    x, y = _data(48)
    model = _cnn(0)
    Trainer(model, optax.adam(1e-2), num_classes=3, preprocess=Preprocess(MEAN, STD), verbose=False).fit(x, y, 3, 16)
    xf = x.astype("float32") / 255.0  # the model's own input domain (nothing normalised for the user)
    retain, forget = (xf[y != 2], y[y != 2]), (xf[y == 2], y[y == 2])
    pool = plk.unlearn_pool(model, retain, forget, "finetune", seeds=[4, 9], epochs=1, batch_size=16, verbose=False)
    single = plk.unlearn(model, retain, forget, "finetune", epochs=1, seed=9, batch_size=16, verbose=False)
    np.testing.assert_allclose(pool.logits(forget[0])[1],
                               single.model.predict(forget[0], verbose=0), rtol=1e-3, atol=1e-4)


def test_members_that_do_not_share_a_layout_are_refused():
    x, y = _data()
    narrow = Trainer(_cnn(0), optax.sgd(0.1), num_classes=3, preprocess=Preprocess(MEAN, STD), verbose=False)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    other = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    wide = Trainer(other, optax.sgd(0.1), num_classes=3, preprocess=Preprocess(MEAN, STD), verbose=False)
    with pytest.raises(ValueError, match="share one architecture"):
        PoolTrainer([narrow, wide], [ArrayStream(x, y, 8)] * 2)
    with pytest.raises(ValueError, match="mode"):
        choose_mode("fast")


@pytest.mark.parametrize("other, what", [
    (dict(optimizer=optax.adam(2e-2)), "optimiser updates differently"),  # another learning rate
    (dict(optimizer=optax.adamw(1e-2, weight_decay=0.1)), "optimiser updates differently"),
    (dict(preprocess=Preprocess((120.0,) * 3, STD)), "another preprocess"),
    (dict(preprocess=Preprocess(MEAN, (60.0,) * 3)), "another preprocess"),
    (dict(augment=["flip"]), "another augment"),
    (dict(mixup_alpha=0.4, augment=["crop", "flip", "mixup"]), "another augment"),
    (dict(loss=lambda inputs: 0.0), "another loss"),
])
def test_members_whose_step_differs_are_refused(other, what):
    x, y = _data()
    settings = dict(optimizer=optax.adam(1e-2), preprocess=Preprocess(MEAN, STD), augment=["crop", "flip"])
    first = Trainer(_cnn(0), settings["optimizer"], num_classes=3, preprocess=settings["preprocess"], augment=settings["augment"],
                    seed=0, verbose=False)
    changed = {**settings, **other}
    loss = {"loss": changed.pop("loss")} if "loss" in changed else {}
    second = Trainer(_cnn(1), changed.pop("optimizer"), num_classes=3, preprocess=changed.pop("preprocess"), seed=1,
                     verbose=False, **changed, **loss)
    with pytest.raises(ValueError, match=f"pool member 1.*{what}"):
        PoolTrainer([first, second], [ArrayStream(x, y, 8)] * 2)
    same = Trainer(_cnn(1), optax.adam(1e-2), num_classes=3, preprocess=Preprocess(MEAN, STD), augment=["crop", "flip"], seed=1, verbose=False)
    PoolTrainer([first, same], [ArrayStream(x, y, 8)] * 2)  # equal settings built twice: accepted


def test_a_loop_pool_never_consumes_its_members_buffers():
    x, y = _data()
    members = [Trainer(_cnn(s), optax.adam(1e-2), num_classes=3, preprocess=Preprocess(MEAN, STD), seed=s, verbose=False) for s in (0, 1)]
    before = [[np.asarray(v) for v in m.train_values] for m in members]
    pool = PoolTrainer(members, [ArrayStream(x, y, 8)] * 2, mode="loop")
    pool.fit(1)
    for m, values in zip(members, before):
        m.sync_to_model()  # "Buffer has been deleted or donated" before the copies
        for v, b in zip(m.train_values, values):
            np.testing.assert_array_equal(np.asarray(v), b)  # the member itself is untouched


def test_pool_bytes_counts_state_and_the_steps_working_memory():
    trainer = Trainer(_cnn(0), optax.adam(1e-3), num_classes=3, preprocess=Preprocess(MEAN, STD), verbose=False)
    state, work, shared = pool_bytes(trainer, 16)
    params = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables) * 4
    assert state >= 3 * params  # values + Adam's two moments
    assert work > 0 and shared == 0
    assert member_seeds(0, "a", 4) == member_seeds(0, "a", 4) != member_seeds(0, "b", 4)
    assert len(set(member_seeds(0, "a", 64))) == 64 and max(member_seeds(0, "a", 64)) < 2**31


SHARDED = r"""
import json, numpy as np
import prunelora_keras, jax, keras
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.api.pools import scratch_pool
from prunelora_keras.data.augment import Preprocess
assert jax.device_count() == 2
rng = np.random.default_rng(0)
x, y = rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 24)
def cnn(seed):
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
recipe = TrainConfig(epochs=1, optimizer="adam", lr=1e-2)
out = {}
for devices in (None, jax.devices()):
    pool = scratch_pool(cnn, recipe, x, y, 8, 3, Preprocess((127.,) * 3, (64.,) * 3), [1, 2, 3, 4], mode="vmap", devices=devices,
                        verbose=False)
    pool.fit(1)
    out[str(devices is not None)] = {"w": [np.asarray(v).ravel().tolist() for v in pool.state().train],
                                     "shards": len(pool.state().train[0].sharding.device_set),
                                     "logits": pool.logits(x, 8).ravel().tolist()}
print(json.dumps(out))
"""


def test_the_k_axis_shards_over_devices_with_the_same_result():
    proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=clean_env() | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["True"]["shards"] == 2 and out["False"]["shards"] == 1
    for a, b in zip(out["True"]["w"], out["False"]["w"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["True"]["logits"], out["False"]["logits"], rtol=1e-5, atol=1e-5)



def test_a_diverging_member_stops_the_pool_with_its_index():
    x, y = _data()
    models = [_cnn(1), _cnn(2)]
    head = models[1].get_layer("head")
    head.kernel.assign(np.full(head.kernel.shape, np.inf, "float32"))  # member 1 only: its loss is not finite
    members = [Trainer(m, optax.sgd(0.01), num_classes=3, preprocess=Preprocess(MEAN, STD), seed=s, verbose=False) for m, s in zip(models, (1, 2))]
    pool = PoolTrainer(members, [ArrayStream(x, y, 16)] * 2, mode="loop", verbose=False)
    with pytest.raises(FloatingPointError, match=r"pool member\(s\) \[1\]"):
        pool.fit(2)


def test_the_ensemble_benchmark_skips_the_pytorch_columns_without_torch(monkeypatch, tmp_path, capsys):
    """benchmarks/ensemble.py without the ``torch`` extra: the JAX columns as usual, the PyTorch ones
    "skipped" with a note (it imported torch unconditionally). The timings are stubbed: nothing trains."""
    import importlib.util
    import types

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as where it is absent
    spec = importlib.util.spec_from_file_location("bench_ensemble", REPO / "benchmarks" / "ensemble.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.torch_or_none() is None
    for timing in (bench.torch_sequential, bench.torch_vmapped):
        assert timing(None, None, None, None, 4).startswith("skipped: PyTorch is not installed")
    ds = types.SimpleNamespace(num_classes=4, image_shape=(4, 4, 3), preprocess=Preprocess(MEAN, STD))
    split = types.SimpleNamespace(retain=Subset(np.zeros((8, 4, 4, 3), np.uint8), np.arange(8) % 4))
    monkeypatch.setattr(bench, "load_data", lambda cfg: (ds, split))
    monkeypatch.setattr(bench, "jax_sequential", lambda *a: 2.0)
    monkeypatch.setattr(bench, "jax_pool", lambda *a: (1.0, "vmap"))
    monkeypatch.setattr(bench, "build_model", lambda *a: None)
    monkeypatch.setattr(bench, "Trainer", lambda *a, **k: None)
    monkeypatch.setattr(bench, "pool_bytes", lambda trainer, batch: (1, 2, 3))
    out = tmp_path / "bench.json"
    assert bench.main(["--k", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["rows"][0]
    assert row["sequential_s"] == 2.0 and row["torch_sequential_s"].startswith("skipped")
    assert row["torch_vmap_s"].startswith("skipped") and result["versions"]["torch"] is None
    printed = capsys.readouterr().out
    assert "| skipped | skipped |" in printed and "PyTorch columns skipped: PyTorch is not installed" in printed
