"""THE training loop: one XLA-compiled step (``stateless_call`` + optax) and the epoch loop around it.

Every method in the package (pretraining, Retrain, each unlearning paradigm) runs through
``Trainer``; recipes differ only in what they hand it: a model, which of its variables train,
optional masks to enforce, an optimiser, augmentation and the data.

The step is a pure function of (trainable values, frozen values, non-trainable values,
optimiser state, batch, key). Which variables train is the caller's choice (``train_vars``),
never an edit of the model between steps. Buffers of the state are donated to XLA so updates
happen in place. Masks (structured pruning) are enforced on gradients and again on the
weights after every optimiser update, so neither momentum nor weight decay revives a zero.

Also here: the compiled evaluation pass (logits and per-sample losses in padded batches, the
last partial batch included), the optimisers and schedules the presets need, and memory/time
measurement.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.augment import infer_images, prepare_batch
from prunelora_keras.data import batches, num_batches
from prunelora_keras.distributed import Placement, device_count
from prunelora_keras.optim import make_optimizer, make_schedule  # noqa: F401  (the loop's optimisers, re-exported)
from prunelora_keras.progress import Progress

# ----------------------------------------------------------------------------- measurement


def peak_memory() -> tuple[int, str]:
    """(bytes, kind): the accelerator's peak bytes in use where JAX reports it, else peak RSS."""
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_rss"


def set_bn_policy(model: keras.Model, policy: str) -> None:
    """``update``: BatchNorm uses batch statistics and updates its running statistics in training,
    as PyTorch's train mode (its gamma and beta train only if the caller trains them).
    ``freeze``: BatchNorm layers are set non-trainable, which in Keras 3 means inference mode
    (running statistics used, never updated). Decided once by the recipe, before the step is built.
    """
    if policy not in ("update", "freeze"):
        raise ValueError(f"unknown BatchNorm policy {policy!r}")
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = policy == "update"


# ----------------------------------------------------------------------------- training


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float  # training accuracy on the (un-mixed) labels, in [0, 1]
    seconds: float  # wall time of the epoch's steps, compilation excluded
    compile_s: float  # compilation time spent before this epoch (first epoch only)
    peak_mem_bytes: int
    mem_kind: str


_SHARED_STEPS: dict[tuple, Callable] = {}  # (shared step key, batch shape) -> compiled step


@dataclass
class Trainer:
    """Trains a chosen subset of a Keras model's variables with one compiled step.

    ``train_vars``: the variables that receive gradients (default: ``model.trainable_variables``);
    each must be one of the model's trainable variables. ``masks``: optional {variable path:
    0/1 array} enforced on those variables after every update. The model's own variables are
    updated only by ``sync_to_model`` (called at the end of ``fit``).

    ``share_key``: a caller's name for everything about the step that the model and the trainer
    do not show (the optimiser and its schedule). Trainers with equal share keys, equal model
    architectures (``architecture_key``), the same trained variables and no masks compute the
    same step, so they share its compiled executables: the pipeline's ``pruned`` (reference
    mode) reuses ``finetune``'s and ``pruned_lora`` reuses ``lora``'s, instead of compiling again.

    ``features``: the model takes precomputed float features (one array, or a list of arrays for
    a model with several inputs, as a frozen-prefix suffix has) instead of uint8 images; they are
    used as they are (no normalisation, no augmentation).
    """

    model: keras.Model
    optimizer: optax.GradientTransformation
    num_classes: int
    mean: Sequence[float]
    std: Sequence[float]
    train_vars: Sequence[keras.Variable] | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    augment: Sequence[str] = ()
    mixup_alpha: float = 0.2
    seed: int = 0
    label: str = "train"
    features: bool = False
    share_key: str | None = None
    distribution: Any = None  # a keras.distribution.DataParallel: batches split over its devices
    verbose: bool = True  # False: no progress bar or epoch lines (e.g. the many short relearning runs)

    def __post_init__(self):
        self.placement = Placement(self.distribution) if self.distribution is not None else None
        if self.features and self.augment:
            raise ValueError("augmentation needs images; a trainer on precomputed features cannot augment")
        model_trainable = list(self.model.trainable_variables)
        chosen = model_trainable if self.train_vars is None else list(self.train_vars)
        ids = {id(v): i for i, v in enumerate(model_trainable)}
        unknown = [v.path for v in chosen if id(v) not in ids]
        if unknown:
            raise ValueError(f"train_vars must be trainable variables of the model; not: {unknown[:3]}")
        self.train_index = sorted({ids[id(v)] for v in chosen})
        self.frozen_index = [i for i in range(len(model_trainable)) if i not in set(self.train_index)]
        paths = [model_trainable[i].path for i in self.train_index]
        missing = set(self.masks) - {v.path for v in self.model.variables}
        if missing:
            raise ValueError(f"masks name variables the model does not have: {sorted(missing)[:3]}")
        # A mask on a variable that does not train is kept by construction; only trained ones need it.
        self.mask_values = [None if p not in self.masks else jnp.asarray(self.masks[p], model_trainable[i].dtype)
                            for p, i in zip(paths, self.train_index)]
        # Copies: the step donates these buffers, and the model's own variables must stay valid.
        self.train_values = self._apply_masks([jnp.array(model_trainable[i].value, copy=True)
                                               for i in self.train_index])
        self.frozen_values = [model_trainable[i].value for i in self.frozen_index]
        self.non_trainable_values = [jnp.array(v.value, copy=True) for v in self.model.non_trainable_variables]
        self.opt_state = self.optimizer.init(self.train_values)
        self.global_step = 0
        self.place_state()
        self._step = jax.jit(self._build_step(), donate_argnums=(0, 2, 3))
        self._compiled: dict[tuple, Callable] = {}
        self._shared_prefix = self._shared_step_key()

    def place_state(self) -> None:
        """Replicate the trained, frozen and non-trainable values and the optimiser state over the
        devices (data-parallel); nothing to do on one device."""
        if self.placement is None:
            return
        rep = self.placement.replicate
        self.train_values, self.frozen_values = rep(self.train_values), rep(self.frozen_values)
        self.non_trainable_values, self.opt_state = rep(self.non_trainable_values), rep(self.opt_state)

    def _shared_step_key(self) -> str | None:
        """The key under which this trainer's compiled steps are shared, or None (not shared).

        Masks are constants inside the step, so trainers with masks never share.
        """
        if self.share_key is None or any(m is not None for m in self.mask_values):
            return None
        try:
            arch = architecture_key(self.model)
        except (NotImplementedError, TypeError):
            return None
        return json.dumps([self.share_key, arch, self.train_index, list(self.augment), self.mixup_alpha,
                           self.num_classes, list(self.mean), list(self.std), self.features,
                           device_count(self.distribution)], default=repr)

    @property
    def trainable_count(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.train_values))

    def _apply_masks(self, values):
        return [v if m is None else v * m for v, m in zip(values, self.mask_values)]

    def _merge(self, train_values, frozen_values):
        full = [None] * (len(train_values) + len(frozen_values))
        for i, v in zip(self.train_index, train_values):
            full[i] = v
        for i, v in zip(self.frozen_index, frozen_values):
            full[i] = v
        return full

    def _build_step(self):
        model, optimizer = self.model, self.optimizer
        augment, alpha, num_classes = tuple(self.augment), self.mixup_alpha, self.num_classes
        mean, std = tuple(self.mean), tuple(self.std)

        features = self.features

        def step(train_values, frozen_values, non_trainable_values, opt_state, images, labels, key):
            if features:  # a tuple of float arrays: the model's inputs as they are
                x = list(images)
                targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
            else:
                x, targets = prepare_batch(key, images, labels, num_classes, mean, std, augment, alpha)

            def loss_fn(tv):
                logits, new_nt = model.stateless_call(self._merge(tv, frozen_values), non_trainable_values, x,
                                                      training=True)
                loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
                return loss, (logits, new_nt)

            (loss, (logits, new_nt)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_values)
            grads = self._apply_masks(grads)
            updates, opt_state = optimizer.update(grads, opt_state, train_values)
            train_values = self._apply_masks(optax.apply_updates(train_values, updates))
            correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
            return train_values, new_nt, opt_state, loss, correct

        return step

    def _args(self, images, labels, key):
        return (self.train_values, self.frozen_values, self.non_trainable_values, self.opt_state, images, labels, key)

    def compile(self, batch_shapes: Sequence[tuple[int, ...]]) -> float:
        """Compile the step for each batch shape ahead of time; returns the seconds spent."""
        start = time.perf_counter()
        key = jax.random.key(0)
        for shape in batch_shapes:
            if shape in self._compiled:
                continue
            spec = self.placement.spec if self.placement is not None else jax.ShapeDtypeStruct
            if self.features:  # shape: one shape per input
                images = tuple(spec(s, jnp.float32) for s in shape)
                labels = spec(shape[0][:1], jnp.int32)
            else:
                images = spec(shape, jnp.uint8)
                labels = spec(shape[:1], jnp.int32)
            if self.placement is not None:
                key = self.placement.replicate(key)
            shared = None if self._shared_prefix is None else (self._shared_prefix, shape)
            if shared is not None and shared in _SHARED_STEPS:
                self._compiled[shape] = _SHARED_STEPS[shared]
                continue
            self._compiled[shape] = self._step.lower(*self._args(images, labels, key)).compile()
            if shared is not None:
                _SHARED_STEPS[shared] = self._compiled[shape]
        return time.perf_counter() - start

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, drop_last: bool = False,
            on_epoch_end: Callable[[EpochStats], None] | None = None, first_epoch: int = 1,
            on_step_end: Callable[[int], bool] | None = None,
            labels_for_epoch: Callable[[int], np.ndarray] | None = None) -> list[EpochStats]:
        """Train for ``epochs`` epochs over (x, y), shuffled per epoch from ``seed`` and the epoch number.

        ``x``: uint8 images, or with ``features`` a list of float feature arrays (one per model input).
        ``on_step_end(steps)``: called after every step with the number of steps this call has
        taken; returning True stops training there (the partial epoch's statistics are kept).
        ``labels_for_epoch(epoch)``: the labels to train on in that epoch instead of ``y`` (e.g.
        random labels drawn afresh every epoch); a pure function of the epoch, so resuming agrees.
        """
        n = len(y)
        steps = num_batches(n, batch_size, drop_last)
        sizes_ = [min(batch_size, n)]
        if not drop_last and n % batch_size and n > batch_size:
            sizes_.append(n % batch_size)
        if self.features:
            x = [np.asarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x])]
            shapes = [tuple((b, *a.shape[1:]) for a in x) for b in sizes_]
        else:
            shapes = [(b, *x.shape[1:]) for b in sizes_]
        compile_s = self.compile(shapes)
        progress = Progress(self.label, first_epoch + epochs - 1, steps, quiet=not self.verbose)
        history = []
        taken, stop = 0, False
        base_key = jax.random.key(self.seed)
        for epoch in range(first_epoch, first_epoch + epochs):
            rng = np.random.default_rng([self.seed, epoch])
            losses, corrects, sizes = [], [], []
            start = time.perf_counter()
            y_epoch = y if labels_for_epoch is None else labels_for_epoch(epoch)
            for i, (xb, yb) in enumerate(batches(x, y_epoch, batch_size, rng, drop_last), start=1):
                key = jax.random.fold_in(base_key, self.global_step)
                if self.features:
                    xb = tuple(xb)
                    step = self._compiled[tuple(a.shape for a in xb)]
                else:
                    step = self._compiled[xb.shape]
                yb = yb.astype(np.int32)
                if self.placement is not None:  # the global batch, split over the devices
                    put = self.placement.put_batch
                    xb = tuple(put(a) for a in xb) if self.features else put(xb)
                    yb, key = put(yb), self.placement.replicate(key)
                (self.train_values, self.non_trainable_values, self.opt_state, loss, correct) = step(
                    *self._args(xb, yb, key))
                self.global_step += 1
                losses.append(loss)
                corrects.append(correct)
                sizes.append(len(yb))
                if progress.tty:  # reading the previous step's loss keeps one step in flight
                    progress.step(epoch, i, float(losses[-2]) if i > 1 else None)
                taken += 1
                if on_step_end is not None and on_step_end(taken):
                    stop = True
                    break
            jax.block_until_ready(self.train_values)
            seconds = time.perf_counter() - start
            step_losses = np.asarray(jax.device_get(losses), np.float64)
            total_loss = float(np.dot(step_losses, sizes))
            total_correct, seen = int(np.sum(jax.device_get(corrects))), int(np.sum(sizes))
            mem, kind = peak_memory()
            stats = EpochStats(epoch, total_loss / seen, total_correct / seen, seconds,
                               compile_s if epoch == first_epoch else 0.0, mem, kind)
            history.append(stats)
            progress.epoch_end(stats)
            if not math.isfinite(stats.loss):
                bad = int(np.flatnonzero(~np.isfinite(step_losses))[0]) if not np.isfinite(step_losses).all() else 0
                raise FloatingPointError(f"{self.label}: loss is {step_losses[bad]} at epoch {epoch}, step {bad + 1} "
                                         f"of {len(step_losses)}")
            if on_epoch_end:
                self.sync_to_model()
                on_epoch_end(stats)
            if stop:
                break
        self.sync_to_model()
        return history

    def current_values(self) -> tuple[list, list]:
        """(the model's trainable values in its own order, its non-trainable values) as trained so
        far, for evaluating without writing them into the model. Valid until the next step."""
        return self._merge(self.train_values, self.frozen_values), list(self.non_trainable_values)

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


# ----------------------------------------------------------------------------- evaluation

_EVAL_FNS: dict[str, tuple[keras.Model, Callable]] = {}


def architecture_key(model: keras.Model) -> str:
    """Equal for two models that compute the same function of (variables, input).

    The pipeline evaluates many models of one architecture (the original, Retrain, each
    paradigm's model, each merged LoRA model at every epoch column); keyed by this, one compiled
    evaluation function serves them all instead of one XLA compilation each.
    """
    config = dict(model.get_config())
    config.pop("name", None)
    shapes = [(tuple(v.shape), str(v.dtype)) for v in model.trainable_variables]
    shapes += [("nt", tuple(v.shape), str(v.dtype)) for v in model.non_trainable_variables]
    text = json.dumps([type(model).__name__, config, shapes], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _eval_fn(model: keras.Model, mean, std) -> Callable:
    """A jitted (trainable, non-trainable, uint8 batch) -> logits function, cached per architecture."""
    mean, std = tuple(mean), tuple(std)
    try:
        key = f"{architecture_key(model)}:{mean}:{std}"
    except (NotImplementedError, TypeError):  # a model without a complete config: cache per object
        key = f"id:{id(model)}:{mean}:{std}"
    cached = _EVAL_FNS.get(key)
    if cached is not None:  # same architecture: the first model's stateless_call computes this one's function
        return cached[1]

    @jax.jit
    def logits_fn(trainable, non_trainable, images):
        return infer_images(model, trainable, non_trainable, images, mean, std).astype(jnp.float32)

    _EVAL_FNS[key] = (model, logits_fn)
    return logits_fn


def predict_logits(model: keras.Model, x: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = 512, values: tuple[list, list] | None = None) -> np.ndarray:
    """Logits over a whole data set in compiled batches; the last batch is padded, then cut back.

    ``values``: (trainable, non-trainable) values to use instead of the model's own variables
    (e.g. ``Trainer.current_values()``), in the order of ``model.trainable_variables`` and
    ``model.non_trainable_variables``; jax backend only.
    On Keras's other backends: the model's own inference call, batch by batch.
    """
    if keras.backend.backend() != "jax":
        mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        out = [keras.ops.convert_to_numpy(model((x[i:i + batch_size].astype(np.float32) / 255.0 - mean_) / std_,
                                                training=False)).astype(np.float32)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)
    fn = _eval_fn(model, mean, std)
    if values is not None:
        trainable, non_trainable = values
    else:
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
    out = padded_batches(lambda xb: fn(trainable, non_trainable, xb), x, batch_size)
    return out[0] if out else np.zeros((0, model.output_shape[-1]), np.float32)


def padded_batches(fn: Callable, x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``fn`` over ``x`` in batches of exactly ``batch_size`` (the last one zero-padded, its outputs
    cut back), so one compilation serves every set; ``fn`` returns an array or a tuple of arrays,
    and so does the result per output, concatenated over the batches (an empty list for empty ``x``)."""
    parts = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        valid = len(xb)
        if valid < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - valid, *xb.shape[1:]), xb.dtype)])
        outputs = fn(xb)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        parts.append([np.asarray(o)[:valid] for o in outputs])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))] if parts else []


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct argmax predictions, in [0, 1] (0 for an empty set)."""
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0
