"""THE training loop: epochs of the one pure, compiled step (``step.train_step``) over a batch stream.

Every method in the package (pretraining, Retrain, each unlearning method, relearning) runs
through ``Trainer``; methods differ only in what they hand it: a model, which of its variables
train, masks to enforce, an optimiser, a loss, an optional frozen teacher, and the data stream.
Which variables train is the caller's choice (``train_vars``), never an edit of the model between
steps. The loop owns the state's buffers (donated to XLA, so updates happen in place) and never
lets a Keras variable hold one: ``sync_to_model`` writes copies.

Also here: the per-epoch statistics and the memory probe. The evaluation pass is ``inference.py``,
optimisers and schedules ``optim.py``, the BatchNorm policy ``bn.py``, the display ``progress.py``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.training.bn import set_bn_policy  # noqa: F401
from prunelora_keras.training.caches import COMPILED
from prunelora_keras.training.epochs import EpochRun, EpochStats, peak_memory, run_epochs, step_hook  # noqa: F401
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.batches import AlternatingFlip, batches, num_batches
from prunelora_keras.parallel.distributed import Placement, device_count
from prunelora_keras.training.optim import make_optimizer, make_schedule  # noqa: F401
from prunelora_keras.training.inference import accuracy, architecture_key, padded_batches, predict_logits  # noqa: F401
from prunelora_keras.training.step import (LossInputs, StepConsts, StepSpec, TrainState, apply_masks,
    cross_entropy_loss, merge_values, train_step)

Batch = dict[str, tuple[Any, np.ndarray]]  # named parts, each (inputs, integer labels)


@dataclass
class ArrayStream:
    """The plain batch stream: ``(x, y)`` shuffled per epoch, as one part named ``"train"``.

    ``labels_for_epoch(epoch)``: the labels to train on in that epoch instead of ``y`` (e.g. random
    labels drawn afresh every epoch); a pure function of the epoch, so resuming agrees.
    """

    x: Any
    y: np.ndarray
    batch_size: int
    drop_last: bool = False
    labels_for_epoch: Callable[[int], np.ndarray] | None = None
    alternating_flip: int | None = None  # a seed: images mirrored on alternate epochs (``AlternatingFlip``)

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(len(self.y), self.batch_size, self.drop_last)

    def __call__(self, epoch: int, rng: np.random.Generator) -> Iterator[Batch]:
        y = self.y if self.labels_for_epoch is None else self.labels_for_epoch(epoch)
        x = self.x if self.alternating_flip is None else AlternatingFlip(self.x, self.alternating_flip, epoch)
        for xb, yb in batches(x, y, self.batch_size, rng, self.drop_last, lazy=True):
            yield {"train": (xb, yb)}


# ----------------------------------------------------------------------------- training


def _signature(batch: Batch) -> tuple:
    """The shapes and dtypes of a batch: one compiled executable per signature."""
    return tuple((name, tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(part)))
                 for name, part in batch.items())


@dataclass
class Trainer:
    """Trains a chosen subset of a Keras model's variables with the one compiled step.

    Args:
        model: the Keras model; its variables change only in ``sync_to_model`` (end of ``fit``).
        optimizer: an optax transformation over the trained values.
        num_classes: width of the one-hot targets.
        preprocess: how stored images become the model's input (``Dataset.preprocess``;
            ignored with ``features``).
        train_vars: the variables that receive gradients (default ``model.trainable_variables``);
            each must be one of the model's trainable variables.
        masks: {variable path: 0/1 array} enforced on those variables after every update.
        augment, mixup_alpha: augmentation of images: on the device crop, translate, flip, mixup
            (``augment.prepare_batch``); in the batch stream ``altflip`` (``batches.AlternatingFlip``:
            (x, y) training only, not a method's own stream).
        label_smoothing: targets (1 - s) one-hot + s / classes (torch's ``label_smoothing``).
        seed: data order (``(seed, epoch)``) and per-step keys (``fold_in(key(seed), step)``).
        label: the name shown in progress lines and errors.
        features: the model takes float inputs used as they are (one array, or a list for a model
            with several inputs): no normalisation, no augmentation. A user's own model on its own
            input domain, or a frozen prefix's cached features.
        share_key: a caller's name for everything about the step that the model and the trainer do
            not show (the optimiser and its schedule). Trainers with equal share keys, equal model
            architectures (``architecture_key``), the same trained variables, no masks and the
            plain loss compute the same step and share its compiled executables.
        distribution: a ``keras.distribution.DataParallel``: batches split over its devices.
        verbose: False: no progress bar or epoch lines.
        loss: the method's loss, ``loss(step.LossInputs) -> scalar`` (default: cross-entropy).
        teacher: (trainable values in the model's order, non-trainable values) of a frozen teacher
            whose logits the loss sees (distillation methods such as SCRUB), or ``{part: (...)}``, one
            teacher per batch part (Bad Teacher); None: no teacher.
        joint: a step's batch parts go through the model in one forward pass (``step.StepSpec.joint``).

    Example:
        >>> trainer = Trainer(model, optax.adam(1e-3), num_classes=10,  # doctest: +SKIP
        ...                   preprocess=Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3))
        >>> history = trainer.fit(x_uint8, y, epochs=2, batch_size=32)  # doctest: +SKIP
    """

    model: keras.Model
    optimizer: optax.GradientTransformation
    _: KW_ONLY  # everything after the model and the optimiser by name
    num_classes: int
    preprocess: Preprocess
    train_vars: Sequence[keras.Variable] | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    augment: Sequence[str] = ()
    mixup_alpha: float = 0.2
    seed: int = 0
    label: str = "train"
    features: bool = False
    share_key: str | None = None
    distribution: Any = None
    verbose: bool = True
    loss: Callable[[LossInputs], jax.Array] = cross_entropy_loss
    teacher: tuple[list, list] | dict[str, tuple[list, list]] | None = None
    joint: bool = False
    label_smoothing: float = 0.0

    def __post_init__(self):
        if keras.backend.backend() != "jax":  # it would fail later, reading torch tensors that require grad
            raise ValueError(f"train.Trainer is the compiled JAX step; Keras runs on {keras.backend.backend()}: unset "
                             "KERAS_BACKEND (or set it to jax), or train with fit_loop.FitTrainer (Keras's fit)")
        self.placement = Placement(self.distribution) if self.distribution is not None else None
        if self.features and self.augment:
            raise ValueError("augmentation needs images; a trainer on precomputed features cannot augment")
        model_trainable = list(self.model.trainable_variables)
        chosen = model_trainable if self.train_vars is None else list(self.train_vars)
        ids = {id(v): i for i, v in enumerate(model_trainable)}
        unknown = [v.path for v in chosen if id(v) not in ids]
        if unknown:
            raise ValueError(f"train_vars must be trainable variables of the model; not: {unknown[:3]}")
        train_index = sorted({ids[id(v)] for v in chosen})
        frozen_index = [i for i in range(len(model_trainable)) if i not in set(train_index)]
        paths = [model_trainable[i].path for i in train_index]
        missing = set(self.masks) - {v.path for v in self.model.variables}
        if missing:
            raise ValueError(f"masks name variables the model does not have: {sorted(missing)[:3]}")
        # A mask on a variable that does not train is kept by construction; only trained ones need it.
        # Set up on the host and copied whole (device_put): an eager cast, copy, product or zeros_like
        # compiles one program per variable shape (a MobileNetV3: about 80, several seconds).
        mask_values = tuple(None if p not in self.masks else
                            jax.device_put(np.asarray(self.masks[p], jnp.dtype(model_trainable[i].dtype)))
                            for p, i in zip(paths, train_index))
        self.spec = StepSpec(self.model, self.optimizer, self.loss, self.num_classes, tuple(train_index),
                             tuple(frozen_index), mask_values, self.preprocess,
                             tuple(a for a in self.augment if a != "altflip"), self.mixup_alpha, self.features,
                             self.joint, self.label_smoothing)
        # Copies: the step donates these buffers, and the model's own variables must stay valid.
        copies = [jax.device_put(model_trainable[i].value, may_alias=False) for i in train_index]
        self.train_values = jax.jit(apply_masks)(self.spec.masks, copies)
        self.frozen_values = [model_trainable[i].value for i in frozen_index]
        self.non_trainable_values = [jax.device_put(v.value, may_alias=False)
                                     for v in self.model.non_trainable_variables]
        self.opt_state = jax.jit(self.optimizer.init)(self.train_values)
        self.global_step = 0
        self.place_state()
        self._step = jax.jit(functools.partial(train_step, self.spec), donate_argnums=(0,))
        self._compiled: dict[tuple, Callable] = {}
        self._shared_prefix = self._shared_step_key()

    @property
    def train_index(self) -> list[int]:
        return list(self.spec.train_index)

    def place_state(self) -> None:
        """Replicate the trained, frozen and non-trainable values and the optimiser state over the
        devices (data-parallel); nothing to do on one device."""
        if self.placement is None:
            return
        rep = self.placement.replicate
        self.train_values, self.frozen_values = rep(self.train_values), rep(self.frozen_values)
        self.non_trainable_values, self.opt_state = rep(self.non_trainable_values), rep(self.opt_state)
        if self.teacher is not None:
            self.teacher = rep(self.teacher)

    def _shared_step_key(self) -> str | None:
        """The key under which this trainer's compiled steps are shared, or None (not shared).

        Masks are constants inside the step, so trainers with masks never share; nor do trainers
        with their own loss or a teacher (the key cannot see a function's identity reliably).
        """
        if (self.share_key is None or any(m is not None for m in self.spec.masks)
                or self.loss is not cross_entropy_loss or self.teacher is not None):
            return None
        try:
            arch = architecture_key(self.model)
        except (NotImplementedError, TypeError):
            return None
        return json.dumps([self.share_key, arch, self.train_index, list(self.augment), self.mixup_alpha,
                           self.label_smoothing,
                           self.num_classes, list(self.preprocess.mean), list(self.preprocess.std), self.features,
                           device_count(self.distribution)], default=repr)

    @property
    def trainable_count(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.train_values))

    def _state(self) -> TrainState:
        return TrainState(self.train_values, self.non_trainable_values, self.opt_state)

    def state(self) -> TrainState:
        """The trained values, non-trainable values and optimiser state, for ``checkpoint.save_state``."""
        return self._state()

    def restore(self, state: TrainState, global_step: int) -> None:
        """Continue from ``state`` (as ``state()`` gives it) after ``global_step`` steps."""
        self.train_values, self.non_trainable_values, self.opt_state = (list(state.train), list(state.non_trainable),
                                                                        state.opt)
        self.global_step = int(global_step)
        self.place_state()

    def _consts(self) -> StepConsts:
        return StepConsts(self.frozen_values, self.teacher)

    def _placed(self, batch: Batch, key: jax.Array) -> tuple[Batch, jax.Array]:
        """The batch as the step takes it: tuples of features, int32 labels, split over the devices."""
        out = {}
        for name, (x, y) in batch.items():
            if self.features:
                x = tuple(np.asarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x]))
            elif self.placement is None:  # one device: the whole batch (a lazy Rows view gathered here)
                x = np.asarray(x)
            out[name] = (x, np.asarray(y).astype(np.int32))
        if self.placement is not None:  # the global batch, split over the devices
            out = jax.tree_util.tree_map(self.placement.put_batch, out)  # each process: its own shards' rows
            key = self.placement.replicate(key)
        return out, key

    def compiled_step(self, batch: Batch, key: jax.Array) -> tuple[Callable, float]:
        """The compiled step for this batch's signature (compiled now if new) and the seconds spent."""
        sig = _signature(batch)
        if sig in self._compiled:
            return self._compiled[sig], 0.0
        start = time.perf_counter()
        shared = None if self._shared_prefix is None else (self._shared_prefix, sig)
        if shared is not None and COMPILED.lookup(("step", *shared)) is not None:
            self._compiled[sig] = COMPILED.lookup(("step", *shared))
        else:
            self._compiled[sig] = self._step.lower(self._state(), self._consts(), batch, key).compile()
            if shared is not None:
                COMPILED.put(("step", *shared), self._compiled[sig])
        return self._compiled[sig], time.perf_counter() - start

    def compile(self, batches_: Iterable[Batch]) -> float:
        """Compile the step ahead of time for each example batch's signature; returns the seconds spent."""
        total = 0.0
        for batch in batches_:
            placed, key = self._placed(batch, jax.random.key(0))
            total += self.compiled_step(placed, key)[1]
        return total

    def fit(self, x: Any = None, y: np.ndarray | None = None, epochs: int = 1, batch_size: int = 32,
            drop_last: bool = False, on_epoch_end: Callable[[EpochStats], None] | None = None, first_epoch: int = 1,
            on_step_end: Callable[[int], bool] | None = None,
            labels_for_epoch: Callable[[int], np.ndarray] | None = None,
            stream: Callable[[int, np.random.Generator], Iterable[Batch]] | None = None) -> list[EpochStats]:
        """Train for ``epochs`` epochs; returns each epoch's statistics.

        Args:
            x, y: uint8 images (with ``features``: float inputs, an array or a list of arrays) and
                integer labels, shuffled per epoch from ``(seed, epoch)``. Ignored with ``stream``.
            epochs, batch_size, drop_last: as in ``keras.Model.fit`` (the last partial batch is kept
                unless ``drop_last``).
            on_epoch_end(stats): called after every epoch, with the model's variables synced.
            first_epoch: the number of the first epoch (a resumed run continues its count).
            on_step_end(steps): called after every step with the number of steps this call has
                taken; returning True stops training there (the partial epoch's statistics are kept).
            labels_for_epoch(epoch): labels for that epoch instead of ``y`` (see ``ArrayStream``).
            stream: a method's own batch stream instead of (x, y): ``stream(epoch, rng)`` yields
                batches ``{part: (inputs, labels)}``; it has ``steps_per_epoch``.
        """
        if stream is not None and "altflip" in self.augment:
            raise ValueError("augment 'altflip' mirrors the (x, y) stream's images by index; a method's own stream "
                             "cannot: use 'flip' with it")
        if stream is None:
            if "altflip" in self.augment and (self.features or isinstance(x, (list, tuple))):
                raise ValueError("augment 'altflip' mirrors one image input; drop it for features or several inputs")
            stream = ArrayStream(x, y, batch_size, drop_last, labels_for_epoch,
                                 self.seed if "altflip" in self.augment else None)
            n = len(y)  # the shapes are known: compile before the first epoch's clock starts
            sizes = [min(batch_size, n)] + ([n % batch_size] if not drop_last and n % batch_size and n > batch_size
                                            else [])
            compile_s = self.compile({"train": ([a[:b] for a in x] if isinstance(x, (list, tuple)) else x[:b], y[:b])}
                                     for b in sizes)
        else:
            compile_s = 0.0
        base_key = jax.random.key(self.seed)
        hook = step_hook()
        taken = [0]

        def run_epoch(epoch: int, progress) -> EpochRun:
            rng = np.random.default_rng([self.seed, epoch])
            losses, corrects, sizes = [], [], []
            start = time.perf_counter()
            epoch_compile = compile_s if epoch == first_epoch else 0.0
            stop = False
            for i, batch in enumerate(stream(epoch, rng), start=1):
                if hook is not None:
                    hook(self.label, epoch, i)
                placed, key = self._placed(batch, jax.random.fold_in(base_key, self.global_step))
                step, spent = self.compiled_step(placed, key)
                epoch_compile += spent
                start += spent  # compilation is not training time
                state, metrics = step(self._state(), self._consts(), placed, key)
                self.train_values, self.non_trainable_values, self.opt_state = state
                self.global_step += 1
                losses.append(metrics["loss"])
                corrects.append(metrics["correct"])
                sizes.append(sum(len(part[1]) for part in batch.values()))
                if progress.tty:  # reading the previous step's loss keeps one step in flight
                    progress.step(epoch, i, float(losses[-2]) if i > 1 else None)
                taken[0] += 1
                if on_step_end is not None and on_step_end(taken[0]):
                    stop = True
                    break
            jax.block_until_ready(self.train_values)
            seconds = time.perf_counter() - start
            return EpochRun(np.asarray(jax.device_get(losses), np.float64), np.asarray(sizes, np.float64),
                            int(np.sum(jax.device_get(corrects))), seconds, epoch_compile, stop)

        def epoch_end(stats: EpochStats) -> None:
            self.sync_to_model()
            on_epoch_end(stats)

        history = run_epochs(self.label, run_epoch, epochs=epochs, first_epoch=first_epoch,
                             steps_per_epoch=getattr(stream, "steps_per_epoch", 0), verbose=self.verbose,
                             on_epoch_end=epoch_end if on_epoch_end else None)
        self.sync_to_model()
        return history

    def current_values(self) -> tuple[list, list]:
        """(the model's trainable values in its own order, its non-trainable values) as trained so
        far, for evaluating without writing them into the model. Valid until the next step."""
        return merge_values(self.spec, self.train_values, self.frozen_values), list(self.non_trainable_values)

    def sync_to_model(self) -> None:
        """Write the trained state back into the Keras model's variables, as copies.

        The step donates the trainer's buffers to XLA, so the next step deletes them: the model
        must never hold one. Copies make a sync in the middle of training (epoch-end callbacks,
        saves between continual requests) safe; the model's arrays stay valid whatever the
        trainer does next.
        """
        trainable = self.model.trainable_variables
        for i, value in zip(self.train_index, self.train_values):
            trainable[i].assign(jnp.array(value, copy=True))
        for var, value in zip(self.model.non_trainable_variables, self.non_trainable_values):
            var.assign(jnp.array(value, copy=True))
