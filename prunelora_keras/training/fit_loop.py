"""The training loop on Keras's other backends (torch, tensorflow): ``model.fit``, same recipes.

On JAX the experiment trains through ``train.Trainer``'s compiled step (faster, resumable,
data-parallel). Everywhere else this loop runs the same paradigms with Keras's own ``fit``: the
same trainable set (every other variable is made non-trainable), the same persistent masks
(re-applied after every optimiser step), the same data order (``(seed, epoch)``), the same
augmentation (``augment.prepare_batch``, run on the host), cross-entropy on the logits, and
Keras's optimisers for the recipe's. Two differences, both documented in the README: Keras's
SGD and Adam apply weight decay decoupled (PyTorch's and ``train.make_optimizer``'s are coupled
L2), and a run on these backends is not resumable mid-stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import keras
import numpy as np

from prunelora_keras.data.augment import Preprocess, prepare_batch
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.data.batches import batches, num_batches
from prunelora_keras.models.pruning import PruneMasks
from prunelora_keras.training.epochs import EpochRun, EpochStats, run_epochs


def keras_schedule(cfg: TrainConfig, total_steps: int):
    """``train.make_schedule``'s learning-rate schedule as a Keras schedule."""
    total_steps = max(total_steps, 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.lr, total_steps)
    if cfg.schedule == "warmup_cosine":
        warmup = min(cfg.warmup_steps, total_steps - 1)
        return keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup, warmup_target=cfg.lr,
                                                      warmup_steps=warmup)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def keras_optimizer(cfg: TrainConfig, total_steps: int, variables: Sequence[keras.Variable]) -> keras.Optimizer:
    """The recipe's optimiser from ``keras.optimizers`` (torch's betas and epsilon for Adam)."""
    lr = keras_schedule(cfg, total_steps)
    clip = {"global_clipnorm": cfg.clip_norm} if cfg.clip_norm > 0 else {}
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=wd, **clip)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=wd, **clip)
    if cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-8, **clip)
        opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])  # matrices only
        return opt
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


class FitTrainer:
    """``train.Trainer``'s interface (``fit``, ``sync_to_model``) over ``model.fit``."""

    def __init__(self, model: keras.Model, recipe: TrainConfig, *, total_steps: int, num_classes: int,
                 preprocess: Preprocess, train_vars: Sequence[keras.Variable] | None = None,
                 masks: dict[str, np.ndarray] | None = None, augment: Sequence[str] = (), mixup_alpha: float = 0.2,
                 seed: int = 0, label: str = "train", verbose: bool = True):
        self.model, self.num_classes, self.preprocess = model, num_classes, preprocess
        self.verbose = verbose
        self.augment, self.mixup_alpha, self.seed, self.label = tuple(augment), mixup_alpha, seed, label
        chosen = {id(v) for v in (model.trainable_variables if train_vars is None else train_vars)}
        for v in model.trainable_variables:
            if id(v) not in chosen:
                v.trainable = False
        trained = list(model.trainable_variables)
        by_path = {v.path: v for v in trained}
        self.masked = [(by_path[p], np.asarray(m)) for p, m in (masks or {}).items() if p in by_path]
        for var, mask in self.masked:
            var.assign(keras.ops.multiply(var, keras.ops.cast(mask, var.dtype)))
        model.compile(optimizer=keras_optimizer(recipe, total_steps, trained),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        self.global_step = 0

    def _epoch(self, x: np.ndarray, y: np.ndarray, batch_size: int, epoch: int, drop_last: bool) -> "_Batches":
        """The epoch's batches in the compiled loop's order; each step's key from (seed, global step)."""
        order = [idx for idx, _ in batches(np.arange(len(y)), y, batch_size,  # (rows, labels): the rows
                                           np.random.default_rng([self.seed, epoch]), drop_last)]
        first_step = self.global_step
        self.global_step += len(order)
        return _Batches(self, x, y, order, first_step)

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, drop_last: bool = False,
            on_epoch_end: Callable[[EpochStats], None] | None = None, first_epoch: int = 1,
            on_step_end: Callable[[int], bool] | None = None) -> list[EpochStats]:
        """As ``train.Trainer.fit``: ``on_step_end(steps)`` is called after every step with the number
        of steps this call has taken (the masks already re-applied); True stops training there."""
        masks = [PruneMasks({v.path: m for v, m in self.masked})] if self.masked else []
        stop = _StopAt(on_step_end) if on_step_end is not None else None

        def run_epoch(epoch: int, progress) -> EpochRun:
            data = self._epoch(x, y, batch_size, epoch, drop_last)
            start = time.perf_counter()
            logs = self.model.fit(data, epochs=1, verbose=0, shuffle=False,
                                  callbacks=masks + ([stop] if stop else [])).history
            seconds = time.perf_counter() - start
            stopped = stop is not None and stop.stopped
            if stopped:
                self.global_step = data.first_step + stop.in_epoch  # the steps actually taken
            # Keras's own epoch mean: one "step" of weight 1 carries it
            return EpochRun(np.array([logs["loss"][-1]]), np.ones(1), float(logs["accuracy"][-1]), seconds, 0.0,
                            stopped)

        return run_epochs(self.label, run_epoch, epochs=epochs, first_epoch=first_epoch,
                          steps_per_epoch=num_batches(len(y), batch_size, drop_last), verbose=self.verbose,
                          on_epoch_end=on_epoch_end)

    def sync_to_model(self) -> None:
        """Nothing to do: ``fit`` trains the model's own variables."""


class _StopAt(keras.callbacks.Callback):
    """Calls ``on_step_end(steps taken in this fit call)`` after every batch and stops the fit when
    it returns True (Keras's fit ends the epoch at the next batch boundary: ``stop_training``).
    Listed after ``PruneMasks``, so a check sees the masked weights."""

    def __init__(self, on_step_end: Callable[[int], bool]):
        super().__init__()
        self.on_step_end, self.taken, self.in_epoch, self.stopped = on_step_end, 0, 0, False

    def on_train_begin(self, logs=None):
        self.in_epoch = 0  # each model.fit call is one epoch

    def on_train_batch_end(self, batch, logs=None):
        self.taken += 1
        self.in_epoch += 1
        if self.on_step_end(self.taken):
            self.stopped = True
            self.model.stop_training = True


class _Batches(keras.utils.PyDataset):
    """One epoch's batches, prepared on demand (normalised, augmented) rather than all at once."""

    def __init__(self, trainer: FitTrainer, x: np.ndarray, y: np.ndarray, order: list[np.ndarray], first_step: int):
        super().__init__()
        self.trainer, self.x, self.y, self.order, self.first_step = trainer, x, y, order, first_step

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        t, idx = self.trainer, self.order[index]
        key = jax.random.fold_in(jax.random.key(t.seed), self.first_step + index)
        images, targets = prepare_batch(key, self.x[idx], self.y[idx].astype(np.int32), t.num_classes,
                                        t.preprocess, t.augment, t.mixup_alpha)
        return np.asarray(images), np.asarray(targets)
