"""Runs that survive: epoch-end state, resume after SIGKILL, determinism, failed stages, disk."""

import errno
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, clean_env
from prunelora_keras.training import checkpoint
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.experiment.run import main
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.data.augment import Preprocess

TINY = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=2", "--set", "retrain.epochs=2",
        "--set", "model.dim=16", "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=16",
        "--set", "data.train_size=300", "--paradigms", "retrain,finetune", "--epochs", "1,2"]
METRICS = ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA", "status")


def _tiny_model(filters=4):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(filters, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.3)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def toy_saved_model(ckpt):
    """A toy data set (4 classes of 8x8 images), its split forgetting class 1, and a tiny model saved at
    ``ckpt``: what the sidecar caches of a saved model are tested on."""
    import keras

    from prunelora_keras.data.datasets import Dataset, make_split
    from prunelora_keras.training.checkpoint import save_model

    rng = np.random.default_rng(0)
    ds = Dataset("toy", rng.integers(0, 255, (120, 8, 8, 3), dtype=np.uint8), np.arange(120) % 4,
                 rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 4, ("a", "b", "c", "d"),
                 (0.5,) * 3, (0.25,) * 3)
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    save_model(model, ckpt)
    return ds, make_split(ds, 1), model, ckpt


def _tiny_trainer(seed=0, filters=4):
    import keras

    keras.utils.set_random_seed(seed)
    return Trainer(_tiny_model(filters), make_optimizer(TrainConfig(epochs=3, optimizer="adam", lr=1e-2), 30), num_classes=4,
                   preprocess=Preprocess((0.0,) * 3, (1.0,) * 3), augment=("flip",), seed=seed)


def test_saved_state_continues_exactly_as_the_uninterrupted_trainer(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 40)
    straight = _tiny_trainer()
    straight.fit(x, y, 3, 8)

    first = _tiny_trainer()
    first.fit(x, y, 1, 8)
    path = tmp_path / "s.state.npz"
    checkpoint.save_state(path, first, {"epoch": 1})
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, then renamed
    resumed = _tiny_trainer(seed=0)
    doc = checkpoint.load_state(path, resumed)
    assert doc["epoch"] == 1 and resumed.global_step == 5
    resumed.fit(x, y, 2, 8, first_epoch=2)
    for a, b in zip(straight.train_values + straight.non_trainable_values,
                    resumed.train_values + resumed.non_trainable_values):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(straight.opt_state), jax.tree_util.tree_leaves(resumed.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_state_of_another_model_is_refused(tmp_path):
    path = tmp_path / "s.state.npz"
    checkpoint.save_state(path, _tiny_trainer(), {"epoch": 1})
    other = _tiny_trainer(filters=5)
    with pytest.raises(ValueError, match="does not hold this trainer's state"):
        checkpoint.load_state(path, other)
    (tmp_path / "torn.state.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert checkpoint.read_meta(tmp_path / "torn.state.npz") is None


def _cli(out, env_extra=None) -> subprocess.CompletedProcess:
    env = clean_env() | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "prunelora_keras.run", *TINY, "--out", str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _metrics(out) -> list[tuple]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [(r["paradigm"], r["epochs"], *(r.get(m) for m in METRICS)) for r in rows]


@pytest.mark.slow
def test_same_command_twice_gives_identical_metrics_and_a_killed_run_resumes_to_them(tmp_path):
    straight = tmp_path / "straight"
    proc = _cli(straight)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = tmp_path / "again"
    proc = _cli(again)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _metrics(again) == _metrics(straight)  # determinism: same seed, machine, backend

    crashed = tmp_path / "crashed"
    proc = _cli(crashed, {"PRUNELORA_KILL_AFTER": "original:1"})  # SIGKILL inside pretraining
    assert proc.returncode == -9 and not (crashed / "results.json").exists()
    assert len(list((crashed / "checkpoints").glob("original-*.state.npz"))) == 1
    proc = _cli(crashed, {"PRUNELORA_KILL_AFTER": "finetune:1"})  # and again inside a paradigm
    assert proc.returncode == -9 and "original: resuming after epoch 1" in proc.stderr
    proc = _cli(crashed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "original: reusing" in proc.stderr and "retrain: reusing" in proc.stderr
    assert "finetune: resuming after epoch 1" in proc.stderr
    assert _metrics(crashed) == _metrics(straight)
    assert not list((crashed / "checkpoints").glob("*.state.npz"))  # states go once their stage is saved


def test_finished_paradigms_are_reused_not_retrained(tmp_path):
    from prunelora_keras.experiment import stages

    done = tmp_path / "paradigms" / "lora-abc.json"
    rows = [{"paradigm": "lora", "epochs": 1, "UA": 1.5, "status": "ok"}]
    stages.save_finished(done, rows, {"test": np.arange(3.0), "forget": np.ones(2)})
    again, losses = stages.load_finished(done)
    assert again == rows and np.array_equal(losses["test"], np.arange(3.0))


def test_non_finite_loss_names_stage_epoch_and_step_and_other_paradigms_still_run(capsys, tmp_path):
    # lr 1e30 makes Finetune's loss non-finite; LoRA trains a few adapter weights and stays finite
    code = main([*TINY, "--paradigms", "finetune,lora", "--set", "finetune.lr=1e30", "--set", "lora.lr=1e30", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "finetune: stopped: finetune: loss is" in err and "at epoch 1, step" in err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    status = {(r["paradigm"], r["epochs"]): r["status"] for r in results["rows"]}
    assert status[("finetune", 1)].startswith("non-finite loss") and status[("finetune", 2)].startswith("non-finite")
    assert "failed: non-finite loss" in (tmp_path / "r" / "results.md").read_text()
    assert ("lora", 2) in status


def test_a_diverged_original_model_ends_the_run_with_one_line(capsys, tmp_path):
    code = main([*TINY, "--set", "pretrain.lr=1e30", "--set", "pretrain.clip_norm=0.0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: original: loss is") and "pretrain.lr" in last, err


def test_too_little_disk_fails_before_training(capsys, tmp_path, monkeypatch):
    import shutil

    from prunelora_keras.experiment import budget

    monkeypatch.setattr(budget.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    code = main([*TINY, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "MB for checkpoints" in err and "choose another --out" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_full_disk_while_saving_is_one_line(capsys, tmp_path, monkeypatch):

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "x"))

    from prunelora_keras.experiment import stages

    monkeypatch.setattr(stages, "save_state", full)  # where the epoch-end state is written
    code = main([*TINY, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: the disk is full"), err


def test_a_stages_accuracies_are_read_back_only_for_the_same_checkpoint_and_data(tmp_path, monkeypatch):
    """A reused model's accuracies come from its sidecar when the checkpoint's bytes, the split and the
    settings are the same, and are computed again when any of them differs."""
    import dataclasses

    from prunelora_keras.data.datasets import make_split
    from prunelora_keras.experiment import stages
    from prunelora_keras.experiment.config import Config
    from prunelora_keras.training.checkpoint import save_model

    ds, split, model, ckpt = toy_saved_model(tmp_path / "original-k.keras")
    cfg = Config()
    calls = []
    real = stages.evaluate_sets
    monkeypatch.setattr(stages, "evaluate_sets", lambda *a: calls.append(1) or real(*a))
    first = stages.stage_accuracies(model, ckpt, split, ds, cfg)
    assert stages.stage_accuracies(model, ckpt, split, ds, cfg) == first and len(calls) == 1  # read back
    other = make_split(ds, 2)  # other data
    stages.stage_accuracies(model, ckpt, other, ds, cfg)
    stages.stage_accuracies(model, ckpt, split, ds, dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, eval_batch_size=7)))  # other settings
    model.layers[1].kernel.assign(model.layers[1].kernel * 2.0)
    save_model(model, ckpt)  # another model in the same file
    changed = stages.stage_accuracies(model, ckpt, split, ds, cfg)
    assert len(calls) == 4 and changed == real(model, split, ds, cfg.data.eval_batch_size)
    assert len(list(tmp_path.glob("original-k.acc-*.json"))) == 4
