"""Pool members that cannot share one compiled step, trained one after another.

A ``PoolTrainer`` trains K members with the first member's step. Members that start from different
models can differ in what they computed from their own model: SalUn's optimiser masks its updates
with the saliency of *its* model, a persistent pruning mask is *its* model's smallest units. U-LiRA's
shadows are such members (each unlearns from its own shadow original). ``MemberwisePool`` keeps
the ``PoolTrainer`` interface (``fit``, ``logits``, ``member_values``, ``state``/``restore`` for
checkpoints) over K ordinary ``Trainer``s, each with its own compiled step: member k is exactly
the single loop's run for its seed, as in a pool, at the cost of K compilations and no batching
over K. ``api.pools.method_pool`` uses it in mode "auto" when ``check_members`` says the steps
differ (``MembersDiffer``), and says so.

Example:
    >>> pool = MemberwisePool(trainers, streams, label="salun x16")  # doctest: +SKIP
    >>> pool.fit(5)  # doctest: +SKIP
    >>> pool.logits(x).shape  # (16, len(x), classes)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prunelora_keras.training.epochs import EpochRun, EpochStats, run_epochs
from prunelora_keras.training.inference import predict_logits
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.pool_trainer import stack, unstack
from prunelora_keras.training.step import TrainState


class MemberwisePool:
    """K ``Trainer``s with their own streams, trained epoch by epoch one member after another.

    Args:
        members: the members' trainers (``verbose=False``; each keeps its own model).
        streams: one batch stream per member (``loop.ArrayStream`` or a method's stream), with the
            same number of steps per epoch (a resumed pool counts one global step for all).
        label: the name in progress lines.
        verbose: one progress line per epoch for the whole pool.
    """

    mode = "memberwise"

    def __init__(self, members: Sequence[Trainer], streams: Sequence[Any], *, label: str = "pool",
                 verbose: bool = True):
        if len(members) < 1 or len(members) != len(streams):
            raise ValueError("one stream per member, and at least one member")
        self.members, self.streams = list(members), list(streams)
        self.k, self.label, self.verbose = len(members), label, verbose
        self.seeds = np.asarray([m.seed for m in members], np.uint32)
        self.global_step = 0

    def state(self) -> TrainState:
        """Every member's state stacked on a leading K axis (``checkpoint.save_state``)."""
        return stack([m.state() for m in self.members])

    def restore(self, state: TrainState, global_step: int) -> None:
        """Continue from ``state`` (as ``state()`` gives it) after ``global_step`` steps of each member."""
        for k, m in enumerate(self.members):
            m.restore(TrainState(*unstack(state, k)), global_step)
        self.global_step = int(global_step)

    def fit(self, epochs: int, first_epoch: int = 1, on_epoch_end: Callable[[EpochStats], None] | None = None
            ) -> list[EpochStats]:
        """Train every member ``epochs`` epochs, each epoch member by member; the pool's statistics
        are the members' means (loss, accuracy), its seconds their sum."""

        def run_epoch(epoch: int, progress) -> EpochRun:
            stats = [m.fit(epochs=1, first_epoch=epoch, stream=s)[0] for m, s in zip(self.members, self.streams)]
            self.global_step = self.members[0].global_step
            # one "step" of K unit-weight losses: the pooled loss and accuracy are the members' means
            return EpochRun(np.asarray([[s.loss for s in stats]]), np.ones((1, self.k)),
                            float(sum(s.accuracy for s in stats)), float(sum(s.seconds for s in stats)),
                            float(sum(s.compile_s for s in stats)))

        return run_epochs(self.label, run_epoch, epochs=epochs, first_epoch=first_epoch, verbose=self.verbose,
                          on_epoch_end=on_epoch_end)

    def member_values(self, k: int) -> tuple[list, list]:
        """(member k's trainable values in its model's order, its non-trainable values)."""
        return self.members[k].current_values()

    output_classes: int | None = None  # logits kept (the first ones): a trained shadow class is not scored

    def logits(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Every member's float32 logits on stored images ``x``: (K, N, classes)."""
        out = np.stack([predict_logits(m.model, x, m.spec.preprocess, batch_size, m.current_values())
                        for m in self.members])
        return out if self.output_classes is None else out[..., :self.output_classes]
