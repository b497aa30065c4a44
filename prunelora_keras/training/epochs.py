"""THE epoch loop: what every trainer does around its steps, written once.

The single-model trainer (``loop.Trainer``), the pools (``pool_trainer.PoolTrainer``) and Keras's
fit on other backends (``fit_loop.FitTrainer``) differ only in how one epoch's steps run; each
hands ``run_epochs`` a function that runs one epoch and reports its step losses, sample counts,
correct predictions, seconds and compilation seconds (``EpochRun``). Everything else is here, the
same for all three: the epoch count from ``first_epoch`` (a resumed run continues it), progress
lines and their ETA, the epoch's statistics (``EpochStats``: sample-weighted mean loss and
accuracy, time with compilation apart, peak memory), the non-finite-loss stop that names the
epoch and the step (or the pool's members), the epoch-end callback and an early stop.

Fault injection for the tests' crash-and-resume runs is a hook too: ``set_step_hook(fn)`` makes
every trainer call ``fn(label, epoch, step)`` before each step (the command installs
``checkpoint.step_fault_point`` when ``PRUNELORA_KILL_AT`` is set; nothing is called otherwise).

Example:
    >>> import numpy as np
    >>> runs = lambda epoch, progress: EpochRun(np.array([1.0, 3.0]), np.array([2, 2]), 3, 0.1, 0.0)
    >>> [s.loss for s in run_epochs("demo", runs, epochs=2, steps_per_epoch=2, verbose=False)]
    [2.0, 2.0]
"""

from __future__ import annotations

import math
import resource
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prunelora_keras.training.progress import Progress


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float  # training accuracy on the (un-mixed) labels, in [0, 1]
    seconds: float  # wall time of the epoch's steps, compilation excluded
    compile_s: float  # compilation time spent before this epoch (first epoch only)
    peak_mem_bytes: int
    mem_kind: str


@dataclass
class EpochRun:
    """What one epoch's steps produced.

    Args:
        losses: each step's mean loss, (steps,) for one model or (steps, K) for a pool.
        counts: the samples behind each loss, the same shape (the loss is their weighted mean).
        correct: correct predictions over the epoch (all members together).
        seconds: wall time of the steps, compilation excluded.
        compile_s: compilation time spent in this epoch.
        stopped: the epoch ended early on the caller's request (``on_step_end``).
    """

    losses: np.ndarray
    counts: np.ndarray
    correct: float
    seconds: float
    compile_s: float
    stopped: bool = False


_STEP_HOOK: list[Callable[[str, int, int], None] | None] = [None]


def set_step_hook(hook: Callable[[str, int, int], None] | None) -> None:
    """Call ``hook(label, epoch, step)`` before every step of every trainer (None: no hook)."""
    _STEP_HOOK[0] = hook


def step_hook() -> Callable[[str, int, int], None] | None:
    """The hook ``set_step_hook`` installed (None: none)."""
    return _STEP_HOOK[0]


def peak_memory() -> tuple[int, str]:
    """(bytes, kind): the accelerator's peak bytes in use where JAX reports it, else peak RSS."""
    import jax

    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_rss"


def run_epochs(label: str, run_epoch: Callable[[int, Progress], EpochRun], *, epochs: int, first_epoch: int = 1,
               steps_per_epoch: int = 0, verbose: bool = True,
               on_epoch_end: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
    """Run ``epochs`` epochs numbered from ``first_epoch``: ``run_epoch(epoch, progress)`` runs one
    epoch's steps; this turns each into ``EpochStats``, prints progress, stops on a non-finite loss
    and calls ``on_epoch_end(stats)``.

    Args:
        label: the trainer's name in progress lines and errors.
        run_epoch: runs one epoch, returns its ``EpochRun``.
        epochs, first_epoch: how many epochs, and the number of the first.
        steps_per_epoch: for the progress bar (0: unknown).
        verbose: False: no progress lines.
        on_epoch_end: called after each epoch with its statistics.
    Returns:
        each epoch's ``EpochStats``.
    Raises:
        FloatingPointError: a step's loss is not finite (the epoch and step, or the pool's members).

    Example:
        >>> import numpy as np
        >>> bad = lambda epoch, progress: EpochRun(np.array([1.0, np.inf]), np.ones(2), 0, 0.0, 0.0)
        >>> run_epochs("demo", bad, epochs=1, verbose=False)
        Traceback (most recent call last):
        ...
        FloatingPointError: demo: loss is inf at epoch 1, step 2 of 2
    """
    progress = Progress(label, first_epoch + epochs - 1, max(steps_per_epoch, 1), quiet=not verbose,
                        first_epoch=first_epoch)
    history = []
    for epoch in range(first_epoch, first_epoch + epochs):
        run = run_epoch(epoch, progress)
        losses, counts = np.asarray(run.losses, np.float64), np.asarray(run.counts, np.float64)
        seen = max(float(counts.sum()), 1.0)
        mem, kind = peak_memory()
        total = float(np.dot(losses, counts)) if losses.ndim == 1 else float((losses * counts).sum())
        stats = EpochStats(epoch, total / seen, float(run.correct) / seen, run.seconds, run.compile_s, mem, kind)
        history.append(stats)
        progress.epoch_end(stats)
        if losses.ndim == 2 and not np.isfinite(losses).all():
            bad = sorted({int(k) for k in np.flatnonzero(~np.isfinite(losses).all(axis=0))})
            raise FloatingPointError(f"{label}: loss is not finite in epoch {epoch} for pool member(s) {bad}")
        if not math.isfinite(stats.loss):
            bad = int(np.flatnonzero(~np.isfinite(losses))[0]) if not np.isfinite(losses).all() else 0
            raise FloatingPointError(f"{label}: loss is {losses[bad]} at epoch {epoch}, step {bad + 1} of {len(losses)}")
        if on_epoch_end is not None:
            on_epoch_end(stats)
        if run.stopped:
            break
    return history
