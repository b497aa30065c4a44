"""Data-parallel training on 4 simulated CPU devices gives the single device's results."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, clean_env

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}

TRAINER_SCRIPT = r"""
import json
import numpy as np
import prunelora_keras, jax, keras
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.parallel.distributed import data_parallel
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.data.augment import Preprocess

assert jax.device_count() == 4
rng = np.random.default_rng(0)
x, y = rng.integers(0, 255, (50, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 50)
out = {}
for devices in (1, 4):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    # no bias before BatchNorm: its gradient is zero up to rounding, which Adam would amplify to full steps
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h)))
    model = keras.Model(inputs, keras.layers.Dense(4)(h))
    dist = data_parallel(devices)
    trainer = Trainer(model, make_optimizer(TrainConfig(epochs=2, optimizer="adam", lr=1e-2), 8), num_classes=4,
                      preprocess=Preprocess((127.0,) * 3, (64.0,) * 3), augment=("crop", "flip"), seed=0, distribution=dist)
    history = trainer.fit(x, y, 2, 16)  # 3 batches of 16 split 4 ways, then a batch of 2, computed whole
    out[devices] = {"loss": [h.loss for h in history],
                    "weights": [np.asarray(v).ravel().tolist() for v in trainer.train_values + trainer.non_trainable_values],
                    "devices_per_weight": len(trainer.train_values[0].sharding.device_set)}
print(json.dumps(out))
"""


def _python(code: str, extra_env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=clean_env() | extra_env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_four_devices_take_the_same_steps_as_one():
    import numpy as np

    proc = _python(TRAINER_SCRIPT, FOUR_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one, four = out["1"], out["4"]
    assert one["devices_per_weight"] == 1 and four["devices_per_weight"] == 4  # replicated over the mesh
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(four["weights"], one["weights"]):  # BatchNorm statistics too: over the global batch
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)  # << one Adam step (lr 1e-2)


TINY = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=1", "--set", "model.dim=16",
        "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=16", "--set", "data.train_size=300",
        "--paradigms", "finetune,lora", "--epochs", "1"]


def _cli(args, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunelora_keras.run", *TINY, *args, "--out", str(out)],
                          env=clean_env() | FOUR_DEVICES, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_one_epoch_on_four_simulated_devices_gives_the_single_device_metrics(tmp_path):
    one = _cli(["--devices", "1"], tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    four = _cli([], tmp_path / "four")  # default: every local device
    assert four.returncode == 0, four.stderr[-3000:]
    assert "data-parallel over 4 devices" in four.stderr and "data-parallel" not in one.stderr
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "four" / "results.json").read_text())
    assert (a["devices"], b["devices"]) == (1, 4)
    for stage in a["stages"]:
        for name, acc in a["stages"][stage]["accuracies"].items():
            assert b["stages"][stage]["accuracies"][name] == pytest.approx(acc, abs=0.5), (stage, name)
    for ra, rb in zip(a["rows"], b["rows"]):
        assert (ra["paradigm"], ra["epochs"]) == (rb["paradigm"], rb["epochs"])
        for m in ("UA", "RA", "TA"):  # within one or two images of a few hundred
            assert rb[m] == pytest.approx(ra[m], abs=1.0), (ra["paradigm"], m)
        for m in ("MIA_loss_logreg", "MIA_confidence_svc"):
            assert rb[m] == pytest.approx(ra[m], abs=3.0), (ra["paradigm"], m)


def test_a_batch_that_does_not_split_over_the_devices_is_one_clear_error(tmp_path):
    proc = _cli(["--set", "unlearn.batch_size=30"], tmp_path / "r")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unlearn.batch_size = 30 does not split evenly over 4 devices: choose a multiple of 4 (e.g. 28) or "
        "pass --devices with a divisor of 30")
    proc = _cli(["--devices", "8"], tmp_path / "r")
    assert proc.returncode == 2 and "only 4 device(s) found" in proc.stderr
