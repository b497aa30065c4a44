"""Safe loading of foreign weights: round trips, refused code, named mismatches."""

import pickle
import sys

import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import ModelConfig
from prunelora_keras.errors import UserError
from prunelora_keras.models import build_model
from prunelora_keras.models.weights import load_weights_file

VIT = ModelConfig("vit", patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)
SHAPE = (8, 8, 3)


def _model(seed: int, cfg: ModelConfig = VIT, classes: int = 10) -> keras.Model:
    """A tiny model with random (seeded) weights, so equal logits mean the weights arrived."""
    model = build_model(cfg, classes, SHAPE)
    rng = np.random.default_rng(seed)
    for v in model.variables:
        if v.dtype == "float32":
            v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))
    return model


def _logits(model: keras.Model) -> np.ndarray:
    x = np.random.default_rng(9).normal(size=(2, *SHAPE)).astype("float32")
    return keras.ops.convert_to_numpy(model(x, training=False))


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value) for v in model.variables]


class _WritesMarker:
    """Unpickling this calls ``open(marker, 'w')``: code execution, made visible by the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_keras_round_trip_gives_equal_logits(tmp_path):
    source, target = _model(0), _model(1)
    source.save(tmp_path / "w.keras")
    assert not np.allclose(_logits(source), _logits(target))
    load_weights_file(tmp_path / "w.keras", target)
    np.testing.assert_array_equal(_logits(target), _logits(source))


def test_keras_mismatches_name_the_first_tensor_and_leave_the_model(tmp_path):
    _model(0, classes=5).save(tmp_path / "five.keras")
    target = _model(1)
    before = _weights(target)
    with pytest.raises(UserError, match=r"shape mismatch at 'head/kernel': .* gives \(16, 5\), the model expects \(16, 10\)"):
        load_weights_file(tmp_path / "five.keras", target)
    for a, b in zip(before, _weights(target)):  # checked before anything was assigned
        np.testing.assert_array_equal(a, b)
    deep = ModelConfig("vit", patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32)
    _model(0, deep).save(tmp_path / "deep.keras")
    with pytest.raises(UserError, match="deep.keras has tensor 'block1_ln1/gamma' that the model does not"):
        load_weights_file(tmp_path / "deep.keras", target)
    _model(0).save(tmp_path / "shallow.keras")
    with pytest.raises(UserError, match=r"shallow.keras lacks tensor 'block1_ln1/gamma' \(shape \(16,\)\)"):
        load_weights_file(tmp_path / "shallow.keras", _model(1, deep))
    for a, b in zip(before, _weights(target)):
        np.testing.assert_array_equal(a, b)


def test_keras_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(UserError, match="holds Python code .* safe mode"):
        load_weights_file(tmp_path / "lambda.keras", _model(0))


def test_bad_paths_and_files(tmp_path):
    model = _model(0)
    with pytest.raises(UserError, match="does not exist"):
        load_weights_file(tmp_path / "missing.keras", model)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UserError, match="is not a file"):
        load_weights_file(tmp_path / "dir.pt", model)
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported suffix '.h5'"):
        load_weights_file(tmp_path / "w.h5", model)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot load .*junk.keras as a Keras model"):
        load_weights_file(tmp_path / "junk.keras", model)


def test_missing_torch_says_which_extra(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(UserError, match=r"needs torch, which is not installed: .*\.\[torch\]"):
        load_weights_file(tmp_path / "w.pt", _model(0))


# ----------------------------------------------------------------------------- PyTorch files


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[torch]'")


def test_torch_round_trip_gives_equal_logits(tmp_path, torch):
    from prunelora_keras.interop.torch import keras_to_state_dict

    source, target = _model(0), _model(1)
    torch.save(keras_to_state_dict(source), tmp_path / "w.pt")
    load_weights_file(tmp_path / "w.pt", target)
    np.testing.assert_allclose(_logits(target), _logits(source), rtol=1e-6, atol=1e-6)
    other = _model(2)
    torch.save({"epoch": 3, "state_dict": keras_to_state_dict(source)}, tmp_path / "ckpt.pth")  # a checkpoint dict
    load_weights_file(tmp_path / "ckpt.pth", other)
    np.testing.assert_allclose(_logits(other), _logits(source), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_torch_file_that_would_run_code_is_refused(tmp_path, torch, writer):
    from prunelora_keras.interop.torch import keras_to_state_dict

    marker = tmp_path / "pwned"
    state = dict(keras_to_state_dict(_model(0)), evil=_WritesMarker(marker))
    if writer == "torch.save":
        torch.save(state, tmp_path / "evil.pt")
    else:
        with open(tmp_path / "evil.pt", "wb") as f:
            pickle.dump(state, f, protocol=2)  # what torch.save writes; protocol 4+ only warns first
    with pytest.raises(UserError, match="refusing to load .*evil.pt: not a plain state dict"):
        load_weights_file(tmp_path / "evil.pt", _model(1))
    assert not marker.exists()


def test_torch_mismatches_name_the_tensor_and_leave_the_model(tmp_path, torch):
    from prunelora_keras.interop.torch import keras_to_state_dict

    target = _model(1)
    before = _weights(target)
    state = keras_to_state_dict(_model(0))
    state["blocks.0.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(UserError, match=r"does not fit the model: shape mismatch at 'blocks.0.mlp.0.weight'"):
        load_weights_file(tmp_path / "shape.pt", target)
    for a, b in zip(before, _weights(target)):  # tensors before the bad one were put back
        np.testing.assert_array_equal(a, b)
    state = keras_to_state_dict(_model(0))
    del state["final_ln.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(UserError, match="does not fit the model: state dict lacks 'final_ln.bias'"):
        load_weights_file(tmp_path / "missing.pt", target)
    state = dict(keras_to_state_dict(_model(0)), **{"extra.weight": torch.zeros(1)})
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="tensors the Keras model does not: first 'extra.weight'"):
        load_weights_file(tmp_path / "extra.pt", target)


@pytest.mark.parametrize("payload, message", [
    ("not a dict", "holds a list, not a state dict"),
    ("empty", "holds an empty dict"),
    ("non-tensor entry", "entry 'head.weight' is a str, not a tensor"),
    ("truncated", "cannot read .* as a PyTorch file"),
    ("junk", "refusing to load .*: not a plain state dict"),
])
def test_malformed_torch_files(tmp_path, torch, payload, message):
    path = tmp_path / "w.pt"
    if payload == "not a dict":
        torch.save([torch.zeros(2)], path)
    elif payload == "empty":
        torch.save({}, path)
    elif payload == "non-tensor entry":
        torch.save({"head.weight": "zeros"}, path)
    elif payload == "truncated":
        torch.save({"w": torch.zeros(64)}, path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"garbage" * 20)
    with pytest.raises(UserError, match=message):
        load_weights_file(path, _model(0))
