"""A saved model loads in a fresh process after ``import prunelora_keras`` alone (issue 14, item 14),
and without it once KERAS_BACKEND names an installed backend (issue 24)."""

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO, clean_env

SAVE = """
import sys
import prunelora_keras
from prunelora_keras.models.lora import add_lora
from prunelora_keras.models.vit import simple_vit
model = simple_vit(10, (8, 8, 3), 2, 16, 1, 2, 16)
adapted, _ = add_lora(model, ["block0_attn_out", "head"], 2, 4)
model.save(sys.argv[1] + "/vit.keras")
adapted.save(sys.argv[1] + "/lora.keras")
"""

LOAD = """
import sys
import numpy as np
import prunelora_keras  # the only import: it registers every custom layer
import keras
x = np.zeros((1, 8, 8, 3), "float32")
for name in ("vit", "lora"):
    model = keras.saving.load_model(sys.argv[1] + "/" + name + ".keras")
    print(name, type(model.get_layer("head")).__name__, model(x).shape)
"""


def test_saved_models_load_after_importing_the_package_only(tmp_path):
    for code in (SAVE, LOAD):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=clean_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["vit Dense (1, 10)", "lora LoRADense (1, 10)"]


TENSORFLOW_INSTALLED = importlib.util.find_spec("tensorflow") is not None
PLAIN_SAVE = """
import sys
import prunelora_keras, keras
keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="head")]).save(sys.argv[1] + "/plain.keras")
"""
PLAIN_LOAD = """
import sys
import keras  # no prunelora_keras: a model of plain Keras layers, as plk.unlearn returns
print(keras.backend.backend(), keras.saving.load_model(sys.argv[1] + "/plain.keras").output_shape)
"""


def _home_naming_tensorflow(tmp_path):
    """A HOME whose ~/.keras/keras.json names tensorflow: what Keras writes on its first import."""
    home = tmp_path / "home"
    (home / ".keras").mkdir(parents=True)
    (home / ".keras" / "keras.json").write_text('{"backend": "tensorflow", "floatx": "float32"}')
    env = clean_env() | {"HOME": str(home)}
    env.pop("KERAS_HOME", None)
    return home, env


@pytest.mark.skipif(TENSORFLOW_INSTALLED, reason="the failure needs TensorFlow to be absent")
def test_a_plain_model_loads_without_the_package_once_keras_backend_is_set(tmp_path):
    """docs/api.md's "loads without this package": where keras.json names an absent TensorFlow,
    Keras alone fails, and KERAS_BACKEND=jax (the documented fix) loads the model."""
    _, env = _home_naming_tensorflow(tmp_path)
    proc = subprocess.run([sys.executable, "-c", PLAIN_SAVE, str(tmp_path)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the package ignores keras.json: JAX
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "No module named 'tensorflow'" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path)], env=env | {"KERAS_BACKEND": "jax"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["jax", "(None,", "3)"]


def test_the_missing_backend_is_named_with_the_fix(tmp_path, monkeypatch):
    from prunelora_keras.errors import BackendUnavailable, backend_unavailable

    home, _ = _home_naming_tensorflow(tmp_path)
    missing = ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    err = backend_unavailable(missing)
    assert isinstance(err, BackendUnavailable) and isinstance(err, ValueError)
    assert str(err).startswith(f"Keras's backend 'tensorflow' (from {home / '.keras' / 'keras.json'}) is not "
                               "installed") and "set KERAS_BACKEND=jax" in str(err) and "\n" not in str(err)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert backend_unavailable(missing) is None  # tensorflow missing is not torch's problem
    assert "(from KERAS_BACKEND)" in str(backend_unavailable(ModuleNotFoundError("x", name="torch")))
    assert backend_unavailable(ModuleNotFoundError("No module named 'sklearn'", name="sklearn")) is None
    assert backend_unavailable(RuntimeError("tensorflow")) is None


@pytest.mark.skipif(TENSORFLOW_INSTALLED, reason="the failure needs TensorFlow to be absent")
def test_the_command_names_the_fix_when_keras_backend_is_not_installed(tmp_path):
    _, env = _home_naming_tensorflow(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "prunelora_keras.run", "--model", "vit", "--preset", "quick",
                           "--out", str(tmp_path / "run")], env=env | {"KERAS_BACKEND": "tensorflow"}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: Keras's backend 'tensorflow' (from KERAS_BACKEND) is not installed (No module named 'tensorflow'): "
        "set KERAS_BACKEND=jax"), proc.stderr[-2000:]


@pytest.mark.skipif(TENSORFLOW_INSTALLED, reason="the failure needs TensorFlow to be absent")
def test_loading_after_the_package_names_the_fix_when_keras_backend_is_not_installed(tmp_path):
    """``import prunelora_keras`` then Keras (to load a saved model) with an exported KERAS_BACKEND
    that is not installed: Keras's own "No module named 'tensorflow'" becomes the library's one line."""
    _, env = _home_naming_tensorflow(tmp_path)
    code = "import prunelora_keras, keras; keras.saving.load_model('m.keras')"
    proc = subprocess.run([sys.executable, "-c", code], env=env | {"KERAS_BACKEND": "tensorflow"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "prunelora_keras.errors.BackendUnavailable: Keras's backend 'tensorflow' (from KERAS_BACKEND) is not "
        "installed (No module named 'tensorflow'): set KERAS_BACKEND=jax"), proc.stderr[-2000:]
