"""THE training step: one pure, top-level function that every method in the package trains with.

``train_step(spec, state, consts, batch, key) -> (state, metrics)`` is a pure function: the static
``StepSpec`` says what is computed (the model's ``stateless_call``, the optimiser, the loss, masks,
augmentation), ``TrainState`` holds what changes (the trained values, the non-trainable values such
as BatchNorm statistics, the optimiser state), ``StepConsts`` what does not (the frozen values and,
for distillation methods, a frozen teacher's values). The loop (``train.Trainer``) jits it once per
spec with the state donated, so XLA updates the buffers in place, in the style of flax's
``examples/imagenet/train.py``.

A batch is a dict of named parts, ``{"train": (x, y)}`` for plain training, ``{"retain": ...,
"forget": ...}`` for a method that sees both in one step (NegGrad+), ``{"forget": ...}`` for a
SCRUB max-step. Each part has its own forward pass, in order, the BatchNorm statistics threaded
through them as in PyTorch code that calls ``model(x_r)`` then ``model(x_f)``. The method's loss
sees every part's logits, soft targets (after mixup) and integer labels, and the teacher's
logits when the spec has one: ``loss(LossInputs) -> scalar``.

Masks (structured pruning) are enforced on the gradients and again on the values after the
optimiser's update, so neither momentum nor weight decay revives a zero.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from prunelora_keras.data.augment import Preprocess, prepare_batch, smooth_targets


class TrainState(NamedTuple):
    """What one step changes (donated to XLA): trained values, non-trainable values, optimiser state."""

    train: list
    non_trainable: list
    opt: Any


class StepConsts(NamedTuple):
    """What a step reads and never changes: the frozen trainable values (in the model's order of the
    variables that do not train) and, for distillation methods, the teacher's (trainable values in the
    model's order, non-trainable values)."""

    frozen: list
    teacher: tuple[list, list] | dict[str, tuple[list, list]] | None = None


class LossInputs(NamedTuple):
    """What a method's loss sees, per batch part (``"train"``, ``"retain"``, ``"forget"``, ...).

    ``logits``: the model's float32 logits in training mode; ``targets``: one-hot (or mixup-soft)
    float32 targets; ``labels``: the integer labels; ``teacher``: the teacher's float32 logits in
    inference mode (None without a teacher).
    """

    logits: dict[str, jax.Array]
    targets: dict[str, jax.Array]
    labels: dict[str, jax.Array]
    teacher: dict[str, jax.Array] | None


def cross_entropy_loss(inputs: LossInputs) -> jax.Array:
    """The mean softmax cross-entropy against the targets: plain training on one part.

    Example:
        >>> import jax.numpy as jnp
        >>> one = {"train": jnp.zeros((2, 3))}
        >>> round(float(cross_entropy_loss(LossInputs(one, {"train": jnp.eye(3)[:2]}, {}, None))), 4)  # log 3
        1.0986
    """
    (name,) = inputs.logits  # one part; methods with several parts define their own loss
    return optax.softmax_cross_entropy(inputs.logits[name], inputs.targets[name]).mean()


@dataclass(frozen=True, eq=False)
class StepSpec:
    """Everything static about a step; equal only to itself (hashed by identity for ``jax.jit``).

    ``train_index`` / ``frozen_index``: positions in ``model.trainable_variables`` of the values that
    train and of those that do not; ``masks``: per trained value a 0/1 array or None.
    ``features``: inputs are float arrays used as they are (no normalisation, no augmentation);
    otherwise stored images, through ``preprocess`` and augmented. ``joint``: a step's parts go
    through the model in one forward pass, concatenated in order, as one mixed batch would (its
    BatchNorm statistics are the whole batch's; Bad Teacher); False: one pass per part.
    """

    model: Any
    optimizer: optax.GradientTransformation
    loss: Callable[[LossInputs], jax.Array]
    num_classes: int
    train_index: tuple[int, ...]
    frozen_index: tuple[int, ...]
    masks: tuple[Any, ...]
    preprocess: Preprocess = Preprocess()
    augment: tuple[str, ...] = ()
    mixup_alpha: float = 0.2
    features: bool = False
    joint: bool = False
    label_smoothing: float = 0.0


def apply_masks(masks: Sequence[Any], values: list) -> list:
    """``values`` with each masked entry multiplied by its 0/1 mask (None: unchanged)."""
    return [v if m is None else v * m for v, m in zip(values, masks)]


def merge_values(spec: StepSpec, train: list, frozen: list) -> list:
    """The model's trainable values in its own order, from the trained and the frozen ones."""
    full = [None] * (len(train) + len(frozen))
    for i, v in zip(spec.train_index, train):
        full[i] = v
    for i, v in zip(spec.frozen_index, frozen):
        full[i] = v
    return full


def _inputs(spec: StepSpec, key: jax.Array, x: Any, y: jax.Array) -> tuple[Any, jax.Array]:
    if spec.features:  # a tuple of float arrays: the model's inputs as they are (one array for one input)
        return (list(x) if len(x) > 1 else x[0]), smooth_targets(y, spec.num_classes, spec.label_smoothing)
    return prepare_batch(key, x, y, spec.num_classes, spec.preprocess, spec.augment, spec.mixup_alpha,
                         spec.label_smoothing)


def train_step(spec: StepSpec, state: TrainState, consts: StepConsts, batch: dict[str, tuple[Any, jax.Array]],
               key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step of ``spec``'s loss on ``batch``; returns the new state and step metrics.

    Pure: the same arguments give the same result, nothing outside them is read or written.

    Args:
        spec: what is computed (static: model, optimiser, loss, masks, augmentation).
        state: the trained values, non-trainable values and optimiser state (donated by the loop).
        consts: the frozen values and an optional teacher's.
        batch: {part name: (inputs, int32 labels)}; one forward pass per part, in order.
        key: the step's random key: augmentation only (crop, flip, mixup; one fold per part). It does
            not drive dropout: Keras's dropout layers draw from their ``SeedGenerator``, whose state is
            one of the non-trainable values, so the masks follow ``state.non_trainable`` (advanced by
            every training-mode call, seeded when the model was built) and repeat for equal states.
    Returns:
        (the new ``TrainState``, {"loss", "correct" (argmax hits over every part), "count"}).

    Example:
        >>> import functools, jax, keras, optax  # doctest: +SKIP
        >>> step = jax.jit(functools.partial(train_step, spec), donate_argnums=(0,))  # doctest: +SKIP
        >>> state, metrics = step(state, consts, {"train": (x, y)}, jax.random.key(0))  # doctest: +SKIP
    """
    model = spec.model
    names = list(batch)
    keys = [key] if len(names) == 1 else [jax.random.fold_in(key, i) for i in range(len(names))]
    prepared = {n: _inputs(spec, k, *batch[n]) for n, k in zip(names, keys)}
    labels = {n: batch[n][1] for n in names}
    teacher = None
    if consts.teacher is not None:
        per_part = isinstance(consts.teacher, dict)
        teacher = {n: jax.lax.stop_gradient(model.stateless_call(
            *(consts.teacher[n] if per_part else consts.teacher), prepared[n][0], training=False)[0].astype(jnp.float32))
            for n in names if not per_part or n in consts.teacher}

    def loss_fn(train_values):
        values = merge_values(spec, train_values, consts.frozen)
        non_trainable, logits = state.non_trainable, {}
        if spec.joint and len(names) > 1:  # one pass over the parts concatenated: one mixed batch
            joined = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *[prepared[n][0] for n in names])
            out, non_trainable = model.stateless_call(values, non_trainable, joined, training=True)
            ends = list(itertools.accumulate(labels[n].shape[0] for n in names))
            for n, start, end in zip(names, [0] + ends[:-1], ends):
                logits[n] = out[start:end].astype(jnp.float32)
        for n in (() if spec.joint and len(names) > 1 else names):  # one pass per part, BatchNorm statistics
            out, non_trainable = model.stateless_call(values, non_trainable, prepared[n][0], training=True)  # in order
            logits[n] = out.astype(jnp.float32)
        loss = spec.loss(LossInputs(logits, {n: prepared[n][1] for n in names}, labels, teacher))
        return loss, (logits, non_trainable)

    (loss, (logits, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.train)
    grads = apply_masks(spec.masks, grads)
    updates, opt = spec.optimizer.update(grads, state.opt, state.train)
    train = apply_masks(spec.masks, optax.apply_updates(state.train, updates))
    correct = sum(jnp.sum(jnp.argmax(logits[n], axis=-1) == labels[n]) for n in names)
    count = sum(labels[n].shape[0] for n in names)
    return TrainState(train, non_trainable, opt), {"loss": loss, "correct": correct, "count": jnp.int32(count)}
