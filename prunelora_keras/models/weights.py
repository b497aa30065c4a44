"""Load weights from a foreign file into a built Keras model, without running code from the file.

Two formats: a Keras ``.keras`` file and a PyTorch state dict (``.pt``/``.pth``). A weights file
from elsewhere is untrusted input, and both formats can carry code: a ``.keras`` file can hold a
``Lambda`` layer's Python bytecode, and a PyTorch file is a pickle, which may call any function
while it loads. So ``.keras`` files load with Keras's safe mode on, and PyTorch files through
``torch.load(..., weights_only=True)``, which unpickles tensors and plain containers only.

Every tensor is checked against the model by name and shape before any is assigned, and the
first mismatch is reported by name; a failed load leaves the model as it was. All failures are
``UserError``: one line, exit code 2.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunelora_keras.errors import UserError

KERAS_SUFFIXES = (".keras",)
TORCH_SUFFIXES = (".pt", ".pth")
# Keys under which training scripts commonly nest the state dict in a checkpoint dict.
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
TORCH_INSTALL = "pip install torch==2.13.0 && pip install -e '.[torch]'"


def load_weights_file(path: str | Path, model: keras.Model) -> None:
    """Copy the weights in ``path`` (``.keras``, ``.pt`` or ``.pth``) into the built ``model``.

    Raises ``UserError`` for a missing, unreadable, unsafe or corrupt file, and for a tensor the
    model lacks, one it needs that the file lacks, or one of another shape (the first is named).
    """
    path = Path(path).expanduser()
    _check_readable(path)
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        _load_keras_file(path, model)
    elif suffix in TORCH_SUFFIXES:
        _load_torch_file(path, model)
    else:
        raise UserError(f"weights file {path} has an unsupported suffix {suffix or '(none)'!r}: "
                        f"expected {', '.join(KERAS_SUFFIXES + TORCH_SUFFIXES)}")


def _check_readable(path: Path) -> None:
    """Missing, folder or unreadable: say so before a loader gives a less direct error."""
    if not path.exists():
        raise UserError(f"weights file {path} does not exist: check the path")
    if not path.is_file():
        raise UserError(f"weights file {path} is not a file: pass a .keras, .pt or .pth file")
    if not os.access(path, os.R_OK):
        raise UserError(f"weights file {path} cannot be read: check its permissions")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0] if lines else ''}".rstrip(": ")


# ----------------------------------------------------------------------------- Keras


def _load_keras_file(path: Path, model: keras.Model) -> None:
    """Load a ``.keras`` file in safe mode, then copy its weights into ``model`` by tensor path."""
    try:
        source = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - whatever a foreign file trips in Keras is a bad file
        if "safe_mode" in str(exc):
            raise UserError(f"refusing to load {path}: it holds Python code (a Lambda layer), which safe mode "
                            "does not run; load weights from a file without Lambda layers") from None
        raise UserError(f"cannot load {path} as a Keras model ({_first_line(exc)}): the file is corrupt or "
                        "was not written by keras.Model.save") from None
    copy_weights(source, model, str(path))


def _by_path(model: keras.Model, what: str) -> dict[str, Any]:
    """``{'layer/variable': variable}``; paths start with the layer name, so this matches by layer name."""
    out: dict[str, Any] = {}
    for var in model.weights:
        if var.path in out:
            raise UserError(f"{what} has two tensors named {var.path!r}: cannot match weights by name")
        out[var.path] = var
    return out


def copy_weights(source: keras.Model, target: keras.Model, what: str = "the source model") -> None:
    """Copy every weight of ``target`` from the same-named weight of ``source``.

    All names and shapes are checked first, so a mismatch leaves ``target`` untouched; the error
    names the first offending tensor in ``target``'s order.
    """
    src, dst = _by_path(source, what), _by_path(target, "the model")
    for name, var in dst.items():
        if name not in src:
            raise UserError(f"{what} lacks tensor {name!r} (shape {tuple(var.shape)}) that the model needs: "
                            "the file was saved from another architecture")
        if tuple(src[name].shape) != tuple(var.shape):
            raise UserError(f"shape mismatch at {name!r}: {what} gives {tuple(src[name].shape)}, the model "
                            f"expects {tuple(var.shape)}: check the model settings (width, dim, classes)")
    extra = [name for name in src if name not in dst]
    if extra:
        raise UserError(f"{what} has tensor {extra[0]!r} that the model does not: the file was saved from "
                        "another architecture")
    for name, var in dst.items():
        var.assign(keras.ops.cast(src[name].value, var.dtype))


# ----------------------------------------------------------------------------- PyTorch


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UserError(f"loading a PyTorch file needs torch, which is not installed: {TORCH_INSTALL}") from None
    return torch


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as ``{name: numpy array}``, unpickling tensors and plain data only."""
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f"it asks for {found[1]}" if found else "it holds objects other than tensors"
        raise UserError(f"refusing to load {path}: not a plain state dict ({detail}); unpickling arbitrary "
                        "Python objects could run code. Save model.state_dict() with torch.save instead") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as a PyTorch file ({_first_line(exc)}): the file is corrupt, "
                        "truncated or was not written by torch.save") from None
    return _tensors(obj, path, torch)


def _tensors(obj: Any, path: Path, torch: Any) -> dict[str, np.ndarray]:
    """Unwrap a checkpoint dict if needed and turn each tensor into a numpy array (bfloat16 -> float32)."""
    for key in NESTED_STATE_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        held = f"a {type(obj).__name__}" if not isinstance(obj, dict) else "an empty dict"
        raise UserError(f"{path} holds {held}, not a state dict: save model.state_dict() with torch.save")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: "
                            "save model.state_dict() with torch.save")
        value = value.detach().cpu()
        out[str(key)] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return out


def _load_torch_file(path: Path, model: keras.Model) -> None:
    """Load a state dict through ``interop.torch``; on a mismatch restore the model and name the tensor."""
    from prunelora_keras.interop.torch import load_state_dict_into_keras

    state = read_state_dict(path)
    before = [keras.ops.convert_to_numpy(v.value) for v in model.variables]
    try:
        load_state_dict_into_keras(model, state)
    except (KeyError, ValueError) as exc:
        for var, value in zip(model.variables, before):  # the loader assigns as it goes: undo a partial load
            var.assign(value)
        message = exc.args[0] if exc.args else str(exc)
        raise UserError(f"{path} does not fit the model: {message}") from None
