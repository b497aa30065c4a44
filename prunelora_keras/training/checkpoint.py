"""Epoch-end training state on disk, so a killed run resumes where it stopped.

A stage's state is one ``.npz`` file: the trained values, the non-trainable values (BatchNorm
statistics), the optimiser state's leaves, the global step and a JSON document (epoch, history,
evaluation rows so far, anything else the stage needs). One file written to a temporary name and
renamed over the old one, so a crash at any instant leaves either the previous epoch's state or
this one's, never a torn mix. Nothing is pickled: loading runs no code.

The random state needs no saving: the data order of epoch ``e`` is drawn from ``(seed, e)`` and
every step's key is ``fold_in(key(seed), global_step)`` (``train.Trainer``), so restoring the
global step restores the random stream.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from prunelora_keras.parallel.multihost import host_value, is_writer, write_once
from prunelora_keras.training.step import TrainState

FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (atomic on POSIX), creating
    its folder. In a multi-process job only process 0 writes, and every process waits until it has
    (``multihost.write_once``)."""
    path = Path(path)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    write_once(write, path.name)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an ``.npz`` file, written atomically (``atomic_write_bytes``)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists (process 0 alone in a multi-process job; the others wait)."""
    path = Path(path)
    write_once(lambda: path.unlink(missing_ok=True), f"removed {path.name}")


def save_model(model, path: Path) -> None:
    """``model.save(path)`` through a temporary name and a rename: a finished ``.keras`` file or none
    (written by process 0 alone in a multi-process job; the others wait and may then load it)."""
    path = Path(path)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.keras")
        model.save(tmp)
        os.replace(tmp, path)

    write_once(write, path.name)


def _state_groups(state) -> dict[str, list]:
    """A ``step.TrainState``'s arrays by file-key prefix: one layout for saving and loading."""
    return {"train": list(state.train), "nt": list(state.non_trainable), "opt": jax.tree_util.tree_leaves(state.opt)}


def save_state(path: Path, trainer, meta: dict[str, Any]) -> None:
    """Save a trainer's state pytree (``trainer.state()``: a ``step.TrainState``, stacked over a
    pool's members), its step count and ``meta`` (JSON-serialisable) atomically to ``path`` (.npz).
    ``Trainer`` and ``PoolTrainer`` both give ``state()`` and take ``restore(state, global_step)``."""

    arrays = {f"{prefix}_{i}": host_value(v) for prefix, values in _state_groups(trainer.state()).items()
              for i, v in enumerate(values)}
    if not is_writer():  # every process took part in gathering; process 0 writes
        atomic_write_bytes(path, b"")
        return
    doc = {"format": FORMAT, "global_step": trainer.global_step, **meta}
    arrays["meta"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    write_npz(path, arrays)


def read_meta(path: Path) -> dict[str, Any] | None:
    """The JSON document of a state file, or None if there is none or it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def load_state(path: Path, trainer) -> dict[str, Any]:
    """Restore ``trainer`` from ``path``; returns the saved JSON document.

    Raises ``ValueError`` if the file does not match the trainer (another model or optimiser).
    """
    import jax.numpy as jnp

    like = trainer.state()
    groups = _state_groups(like)
    with np.load(path, allow_pickle=False) as z:
        doc = json.loads(z["meta"].tobytes().decode())
        expected = {f"{prefix}_{i}" for prefix, values in groups.items() for i in range(len(values))}
        if doc.get("format") != FORMAT or set(z.files) - {"meta"} != expected:
            raise ValueError(f"{path} does not hold this trainer's state")
        saved = {prefix: [z[f"{prefix}_{i}"] for i in range(len(values))] for prefix, values in groups.items()}
    for prefix, values in groups.items():
        for array, current in zip(saved[prefix], values):
            if array.shape != tuple(current.shape) or array.dtype != current.dtype:
                raise ValueError(f"{path} does not hold this trainer's state (a shape or dtype differs)")
    opt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like.opt), [jnp.asarray(v) for v in saved["opt"]])
    trainer.restore(TrainState([jnp.asarray(v) for v in saved["train"]], [jnp.asarray(v) for v in saved["nt"]], opt),
                    int(doc["global_step"]))  # data-parallel or sharded: placed back onto the devices
    return doc


def fault_point(stage: str, epoch: int) -> None:
    """Testing hook: ``PRUNELORA_KILL_AFTER=stage:epoch`` kills this process with SIGKILL right
    after that epoch's state is saved, exactly as a crash or an out-of-memory kill would."""
    target = os.environ.get("PRUNELORA_KILL_AFTER")
    if target and target == f"{stage}:{epoch}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def step_fault_point(stage: str, epoch: int, step: int) -> None:
    """Testing hook: ``PRUNELORA_KILL_AT=stage:epoch:step`` kills this process with SIGKILL just before
    that step of that epoch: a crash in the middle of an epoch (in a multi-process job every process
    given the variable dies at the same step, as when a job is cancelled)."""
    target = os.environ.get("PRUNELORA_KILL_AT")
    if target and target == f"{stage}:{epoch}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
