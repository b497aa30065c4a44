"""Progress of a training run: a bar with ETA on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A progress bar with ETA on a terminal; one plain log line per epoch otherwise.

    ``epochs`` is the last epoch's number; ``first_epoch`` the first this process trains (a resumed run
    starts later): the ETA extrapolates this process's time over the epochs it trains, not over
    epochs trained before it started.
    """

    def __init__(self, label: str, epochs: int, steps: int, stream=None, quiet: bool = False, first_epoch: int = 1):
        self.label, self.epochs, self.steps, self.first = label, epochs, steps, first_epoch
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def step(self, epoch: int, step: int, loss: float | None = None) -> None:
        if not self.tty:
            return
        done = (epoch - self.first) * self.steps + step
        total = (self.epochs - self.first + 1) * self.steps
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        bar = "#" * int(20 * step / self.steps)
        loss_txt = f" loss {loss:.4f}" if loss is not None else ""
        self.stream.write(f"\r{self.label} epoch {epoch}/{self.epochs} [{bar:<20}] {step}/{self.steps}"
                          f"{loss_txt} ETA {format_seconds(eta)}   ")
        self.stream.flush()

    def epoch_end(self, stats: Any) -> None:
        if self.quiet:
            return
        done = (stats.epoch - self.first + 1) / (self.epochs - self.first + 1)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (1 - done)
        line = (f"{self.label} epoch {stats.epoch}/{self.epochs}: loss {stats.loss:.4f} acc {100 * stats.accuracy:.2f}% "
                f"{stats.seconds:.1f}s" + (f" (+{stats.compile_s:.1f}s compile)" if stats.compile_s else "")
                + f" ETA {format_seconds(eta)}")
        self.stream.write(("\r" if self.tty else "") + line + ("   \n" if self.tty else "\n"))
        self.stream.flush()


def format_seconds(seconds: float) -> str:
    """``12m05s``, or ``1h02m`` from an hour on (progress lines' ETA).

    Args:
        seconds: a duration.
    Returns:
        The duration, rounded to the second (to the minute from an hour on).

    Example:
        >>> format_seconds(725), format_seconds(3725)
        ('12m05s', '1h02m')
    """
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: "1 epoch", "10 epochs" (every line the package prints).

    Example:
        >>> count(1, "epoch"), count(3, "epoch")
        ('1 epoch', '3 epochs')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
