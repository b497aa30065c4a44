"""The progress lines' ETA: extrapolated from this process's own epochs, a resumed run's included."""

import io
from types import SimpleNamespace

from prunelora_keras.training import progress


def _line(first_epoch: int, epoch: int, total: int, monkeypatch) -> str:
    clock = iter([0.0, 100.0])  # the Progress starts at 0 s; the epoch ends at 100 s
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    bar = progress.Progress("retrain", total, 10, stream=out, first_epoch=first_epoch)
    bar.epoch_end(SimpleNamespace(epoch=epoch, loss=1.0, accuracy=0.5, seconds=100.0, compile_s=0.0))
    return out.getvalue()


def test_eta_of_a_fresh_run_is_the_remaining_epochs_at_the_pace_so_far(monkeypatch):
    assert _line(1, 1, 15, monkeypatch).rstrip().endswith("ETA 23m20s")  # 14 more epochs of 100 s


def test_eta_of_a_resumed_run_counts_only_the_epochs_this_process_trained(monkeypatch):
    # resumed after epoch 5: epoch 6 took 100 s, 9 remain (before the fix: 100 / (6/15) x (9/15) = 2m30s)
    assert _line(6, 6, 15, monkeypatch).rstrip().endswith("ETA 15m00s")
