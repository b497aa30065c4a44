"""What a run will cost before it starts: training time on a CPU, and disk for its checkpoints.

The command warns with the first (the paper preset on a CPU takes days) and refuses to start
when the run folder's disk cannot hold the second, rather than failing hours in; before either,
``check_out_dir`` refuses a run folder that cannot be created or written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prunelora_keras.errors import UserError

# Rough training throughput of a 2-core x86 CPU (measured here on the quick and cpu presets),
# used only to warn how long the paper preset would take without an accelerator.
CPU_TRAIN_FLOPS_PER_S = 2.0e10


def estimate_train_seconds(cfg, n_train: int, n_retain: int, image_shape, num_classes: int) -> float:
    """Seconds to pretrain and retrain on this CPU: 3x forward FLOPs (XLA's count) x images x epochs."""
    import jax
    import jax.numpy as jnp
    import keras

    from prunelora_keras.models import build_model

    model = build_model(cfg.model, num_classes, image_shape)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    lowered = jax.jit(lambda a, b, c: model.stateless_call(a, b, c)[0]).lower(tv, ntv, x)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    keras.backend.clear_session()
    images = n_train * cfg.pretrain.epochs + n_retain * cfg.retrain.epochs
    return 3.0 * flops * images / CPU_TRAIN_FLOPS_PER_S


REPORT_SLACK_BYTES = 20_000_000  # reports, plots and per-sample losses: what the disk check adds on top


def checkpoint_bytes(cfg, num_classes: int, image_shape) -> int:
    """The most the run's checkpoints hold at once: the original and Retrain models (.keras), one
    stage's epoch-end state at a time (weights, BatchNorm statistics and two Adam moments) and one LoRA
    model's adapters. ``check_disk`` adds ``REPORT_SLACK_BYTES`` for reports and plots."""
    import keras
    import numpy as np

    from prunelora_keras.models import build_model

    model = build_model(cfg.model, num_classes, image_shape)
    weights = sum(int(np.prod(v.shape)) for v in model.weights) * 4
    keras.backend.clear_session()
    return int(weights * 6 * 1.2)


def check_out_dir(out_dir: Path, probe: bool = True) -> None:
    """Refuse a run folder that cannot be created or written (one line, ``UserError``), before
    anything heavy runs: an existing file on the way ("not a directory"), a folder this user cannot
    write or a read-only or virtual file system ("not writable": probed by creating, then removing,
    a uniquely named folder, which is race-free when several processes check the same path).
    ``probe=False`` (a process of a multi-process job that does not write the run folder) checks the
    path only and leaves nothing behind, so that only the writer ever touches the folder."""
    import os
    import tempfile

    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == out_dir:
            raise UserError(f"--out {out_dir} is a file, not a directory: pass a folder (a new one is created)")
        raise UserError(f"--out {out_dir} cannot be created: {existing} is a file, not a directory: choose another "
                        "--out")
    if not probe:
        return
    try:
        probe_dir = tempfile.mkdtemp(prefix=".prunelora-write-test-", dir=existing)
        os.rmdir(probe_dir)
    except OSError as exc:
        reason = f"creating a folder in it failed: {exc.strerror or exc.__class__.__name__}"
        if existing == out_dir:
            raise UserError(f"--out {out_dir} is not writable ({reason}): choose another --out") from None
        raise UserError(f"--out {out_dir} cannot be created: {existing} is not writable ({reason}): choose another "
                        "--out") from None


def check_disk(out_dir: Path, need: int) -> None:
    """Fail before training when the run folder's disk cannot hold the checkpoints (``need``) and the reports."""
    need += REPORT_SLACK_BYTES
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need:
        raise UserError(f"the run needs about {need / 1e6:.0f} MB for checkpoints and reports in {out_dir}, but only "
                        f"{free / 1e6:.0f} MB are free there: free some space or choose another --out")
