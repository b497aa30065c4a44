"""What the methods of the literature are built from: SGD chains, l1 penalties, update masks,
random labels, weight saliency, the knowledge-distillation divergence, streams that mix D_r with
D_f (or with another set) in every batch, and step-decayed learning rates.

Pure helpers, no registry entries: ``baselines.py``, ``neggrad.py``, ``scrub.py``, ``bad_teacher.py``,
``amun.py`` (and a user's own methods) compose them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.data.augment import Preprocess, infer_images
from prunelora_keras.data.batches import Rows, batches, num_batches


def random_other_labels(y: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Each label replaced by a uniformly drawn *other* class (never the true one)."""
    shift = np.random.default_rng([seed, 7919]).integers(1, num_classes, len(y))
    return ((y + shift) % num_classes).astype(y.dtype)


def random_labels_per_epoch(y: np.ndarray, is_forget: np.ndarray, num_classes: int, seed: int
                            ) -> Callable[[int], np.ndarray]:
    """Labels for each epoch: ``y`` with every forget entry replaced by a label drawn uniformly from all
    ``num_classes`` classes (the true one included), afresh for every epoch, from (seed, epoch).

    Each forget image sits in exactly one batch per epoch, so this is OPTML-Group's "a new random label
    for every forget batch"; seeded by the epoch, a resumed run draws the same labels.
    """
    idx = np.flatnonzero(is_forget)

    def labels(epoch: int) -> np.ndarray:
        out = np.array(y, copy=True)
        out[idx] = np.random.default_rng([seed, 6151, epoch]).integers(0, num_classes, len(idx))
        return out

    return labels


def decaying_l1(alpha: float, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
    """Adds the gradient of alpha * (1 - e / E) * ||theta||_1, e the 0-based epoch of the step."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        epoch = state.count // max(steps_per_epoch, 1)
        coef = alpha * (1.0 - epoch.astype(jnp.float32) / max(epochs, 1))
        updates = jax.tree_util.tree_map(lambda g, p: g + coef * jnp.sign(p).astype(g.dtype), updates, params)
        return updates, optax.ScaleByScheduleState(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def masked_updates(masks: Sequence[np.ndarray | None]) -> optax.GradientTransformation:
    """Zero the updates of every entry outside its 0/1 mask (None: the whole variable moves)."""
    consts = [None if m is None else jnp.asarray(m, jnp.float32) for m in masks]

    def update(updates, state, params=None):
        return [u if m is None else u * m.astype(u.dtype) for u, m in zip(updates, consts)], state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def sgd_chain(lr: float | optax.Schedule, hparams: Any, *, ascend: bool = False, l1: optax.GradientTransformation | None = None,
              masks: Sequence[np.ndarray | None] | None = None) -> optax.GradientTransformation:
    """The code bases' SGD (``hparams.momentum``, coupled ``hparams.weight_decay``) with the method's additions, in order:
    ascent flips the loss gradient only; decay and l1 are added after it; masks come last. ``lr`` may
    be a schedule over the step count (SCRUB's step decay), applied as PyTorch applies a changed lr:
    to the momentum buffer's step, the buffer itself unscaled."""
    h = hparams
    parts = []
    if ascend:
        parts.append(optax.scale(-1.0))
    if h.weight_decay:
        parts.append(optax.add_decayed_weights(h.weight_decay))
    if l1 is not None:
        parts.append(l1)
    if masks is not None:
        parts.append(masked_updates(masks))
    parts.append(optax.sgd(lr, momentum=h.momentum or None))
    return optax.chain(*parts)


def saliency_masks(model: keras.Model, train_vars: Sequence[keras.Variable], forget_x: np.ndarray,
                   forget_y: np.ndarray, preprocess: Preprocess, ratio: float,
                   batch_size: int) -> list[np.ndarray]:
    """SalUn's weight saliency: |gradient of the mean forget loss| over D_f (inference mode), and
    1 for exactly round(``ratio`` x n) of the n entries of ``train_vars``: the largest values (one
    global top-k; among equal values the earlier entry, in variable order, wins)."""
    trainable = list(model.trainable_variables)
    chosen = {id(v) for v in train_vars}
    index = [i for i, v in enumerate(trainable) if id(v) in chosen]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def grad_sum(values, images, labels):
        def loss(vals):
            logits = infer_images(model, vals, non_trainable, images, preprocess)
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).sum()

        return jax.grad(loss)(values)

    values = [v.value for v in trainable]
    total = None
    for start in range(0, len(forget_y), batch_size):
        g = grad_sum(values, forget_x[start:start + batch_size], forget_y[start:start + batch_size].astype(np.int32))
        total = g if total is None else [a + b for a, b in zip(total, g)]
    magnitudes = [np.abs(np.asarray(total[i])) for i in index]
    flat = np.concatenate([m.ravel() for m in magnitudes])
    keep = int(round(ratio * flat.size))
    if keep <= 0:
        return [np.zeros_like(m) for m in magnitudes]
    order = np.argsort(-flat, kind="stable")  # largest first; equal magnitudes: the earlier entry first
    chosen_flat = np.zeros(flat.size, np.float32)
    chosen_flat[order[:keep]] = 1.0  # exactly round(ratio * n), ties or not
    out, start = [], 0
    for m in magnitudes:
        out.append(chosen_flat[start:start + m.size].reshape(m.shape))
        start += m.size
    return out


def random_init_copy(model: keras.Model, seed: int) -> keras.Model:
    """A model of ``model``'s architecture with fresh weights from its layers' own initialisers, drawn
    from ``seed``. Keras's unseeded initialisers take their seed from Python's ``random`` when they
    are made, and unseeded ops from Keras's global seed generator: both are seeded with ``seed`` while
    the copy is built and restored after it, so nothing else's random stream moves. Bad Teacher's
    incompetent teacher: the untrained network of the same architecture."""
    import random

    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    previous, python_state = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR), random.getstate()
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, keras.random.SeedGenerator(int(seed)))
    random.seed(int(seed))
    try:
        clone = keras.models.clone_model(model)
    finally:
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, previous)
        random.setstate(python_state)
    layout = [[tuple(v.shape) for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables)]
    if [[tuple(v.shape) for v in vs] for vs in (clone.trainable_variables, clone.non_trainable_variables)] != layout:
        raise ValueError("a fresh copy of this model (keras.models.clone_model) does not have the model's variables in "
                         "its order; build the model with the Functional API so that it can be cloned")
    return clone


def fold_gradients(model: keras.Model, x: np.ndarray, y: np.ndarray, preprocess: Preprocess, batch_size: int,
                   combine: Callable[[Any, list], Any], total: Any = None, *, training: bool = False) -> Any:
    """Fold ``combine(total, g)`` over the batches of (x, y) in order, ``g`` the gradient of the
    batch's *mean* cross-entropy with respect to ``model.trainable_variables`` (as PyTorch code that
    calls ``loss.backward()`` once per batch of a loader sees it).

    ``training``: False: inference mode (SSD's importances, ``model.eval()``); True: training mode,
    BatchNorm normalising with the batch's statistics and its running statistics (and dropout's
    seed state) updated batch after batch and written back to ``model`` (Deep Unlearn's MSG, which
    never calls ``eval()`` before its gradient pass).

    Example:
        >>> import keras, numpy as np  # doctest: +SKIP
        >>> sq = fold_gradients(model, x, y, Preprocess(), 64,
        ...                     lambda t, g: [a + b * b for a, b in zip(t, g)] if t else [b * b for b in g])  # doctest: +SKIP
    """
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def gradient(values, state, images, labels):
        def loss(vals):
            out, new_state = model.stateless_call(vals, state, preprocess(images), training=training)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.astype(jnp.float32), labels)
            return ce.mean(), new_state

        return jax.grad(loss, has_aux=True)(values)

    for start in range(0, len(y), batch_size):
        g, state = gradient(trainable, non_trainable, x[start:start + batch_size],
                            np.asarray(y[start:start + batch_size]).astype(np.int32))
        if training:
            non_trainable = state
        total = combine(total, g)
    if training:
        for var, value in zip(model.non_trainable_variables, non_trainable):
            var.assign(value)
    return total


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """SCRUB's ``DistillKL``: KL(softmax(t / T) || softmax(s / T)) summed over classes, averaged over
    the batch and scaled by T^2 (Hinton et al.'s gradient scale), as PyTorch's
    ``F.kl_div(log_softmax(s / T), softmax(t / T), size_average=False) * T**2 / batch``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(distill_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 4.0))
        0.0
    """
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return jnp.mean(kl) * temperature ** 2


@dataclass
class RetainWithForget:
    """Batches ``{"retain": D_r batch, "forget": D_f batch}``: D_r once per epoch, D_f cycled.

    Both orders come from the epoch's generator, D_f's permutation drawn first: the forget batches
    are listed before D_r's batches (a lazy generator, which draws its permutation at its first
    batch) start. D_f's batches have one size (the last partial one is dropped).
    """

    retain: Any
    forget: Any
    batch_size: int
    forget_batch: int
    drop_last: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(len(self.retain), self.batch_size, self.drop_last)

    def __call__(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        retain = batches(self.retain.x, self.retain.y, self.batch_size, rng, self.drop_last, lazy=True)
        forget_order = list(batches(self.forget.x, self.forget.y, self.forget_batch, rng, drop_last=True, lazy=True))
        for i, part in enumerate(retain):
            yield {"retain": part, "forget": forget_order[i % len(forget_order)]}


@dataclass
class ForgetThenRetain:
    """SalUn's CIFAR-10 epoch (OPTML-Group's ``unlearn/RL.py``, its cifar10/svhn branch): every D_f batch, then
    every D_r batch, each set shuffled on its own, as one part named ``"train"`` (plain cross-entropy).
    D_f's last partial batch is always kept (their loader's; dropped, a D_f smaller than a batch would
    never be seen); ``drop_last`` drops D_r's.

    Args:
        x, y: D_r's ``n_retain`` rows first and D_f's after them (as ``baselines.random_label_data`` builds them).
        n_retain: how many leading rows are D_r.
        batch_size: samples per batch, both sets.
        drop_last: drop D_r's last partial batch (D_f's is always kept).
        labels_for_epoch: ``labels_for_epoch(epoch)`` replaces ``y`` in that epoch (D_f's random labels).
    Returns (called as ``stream(epoch, rng)``):
        an iterator of ``{"train": (inputs, labels)}`` batches, D_f's first; ``steps_per_epoch`` counts them.

    Example:
        >>> s = ForgetThenRetain(np.arange(7)[:, None], np.zeros(7, int), n_retain=5, batch_size=2, drop_last=True)
        >>> [np.asarray(b["train"][0]).ravel().tolist() for b in s(1, np.random.default_rng(0))][0], s.steps_per_epoch
        ([5, 6], 3)
    """

    x: Any
    y: np.ndarray
    n_retain: int
    batch_size: int
    drop_last: bool = False
    labels_for_epoch: Callable[[int], np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        n_forget = len(self.y) - self.n_retain
        return num_batches(n_forget, self.batch_size) + num_batches(self.n_retain, self.batch_size, self.drop_last)

    def __call__(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        y = self.y if self.labels_for_epoch is None else self.labels_for_epoch(epoch)
        forget = self.n_retain + rng.permutation(len(self.y) - self.n_retain)  # D_f's order drawn first
        retain = rng.permutation(self.n_retain)
        for order, drop in ((forget, False), (retain, self.drop_last)):
            stop = len(order) - (len(order) % self.batch_size if drop else 0)
            for start in range(0, stop, self.batch_size):
                idx = order[start:start + self.batch_size]
                yield {"train": (Rows(self.x, idx), y[idx])}


def mixed_batch_sizes(batch_size: int, n_retain: int, n_forget: int) -> tuple[int, int]:
    """(retain, forget) samples per batch in the stream's proportion, at least one of each.

    Example:
        >>> mixed_batch_sizes(128, 270, 100)
        (93, 35)
    """
    forget = int(round(batch_size * n_forget / (n_forget + n_retain)))
    forget = min(max(forget, 1), n_forget, batch_size - 1)
    return batch_size - forget, forget


def step_decay_schedule(lr: float, decay_epochs: Sequence[int], rate: float,
                        epoch_steps: Callable[[int], int]) -> optax.Schedule:
    """SCRUB's ``adjust_learning_rate`` as a schedule over the optimiser's step count (from 0): in
    epoch e (from 1) the rate is ``lr * rate ** #{d in decay_epochs: e > d}``.

    ``epoch_steps(e)`` is the number of steps of epoch e; a decay after epoch d takes effect at step
    ``epoch_steps(1) + ... + epoch_steps(d)``, the first step of epoch d + 1 (a repeated d decays twice,
    as in their code).

    Example:
        >>> sched = step_decay_schedule(1.0, [1], 0.1, lambda e: 3 if e == 1 else 2)
        >>> [round(float(sched(i)), 6) for i in range(5)]
        [1.0, 1.0, 1.0, 0.1, 0.1]
    """
    boundaries = np.asarray(sorted(sum(epoch_steps(e) for e in range(1, d + 1)) for d in decay_epochs), np.int64)
    rates = np.asarray([lr * rate ** k for k in range(len(boundaries) + 1)], np.float32)  # each rounded once

    def schedule(count: jax.Array) -> jax.Array:
        return jnp.asarray(rates)[jnp.sum(jnp.asarray(count)[..., None] >= boundaries, axis=-1)]

    return schedule
