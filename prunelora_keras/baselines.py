"""The unlearning baselines of the literature, on the same loop, models, metrics and report.

Each method is what it trains on and an optax chain; the model, the loop (``train.Trainer``) and
the evaluation are the paradigms' own. Recipes follow the code base of Jia, Liu et al., "Model
sparsity can simplify machine unlearning" (NeurIPS 2023, github.com/OPTML-Group/Unlearn-Sparse)
and its successor SalUn (Fan et al., ICLR 2024): SGD with momentum 0.9 and weight decay 5e-4,
and each method's published learning rate (``UnlearnConfig``: ``ga_lr``, ``rl_lr``, ``l1_lr``,
``salun_lr``).

- ``ga``, gradient ascent (Thudi et al. 2022; Graves et al. 2021): ascend the cross-entropy on
  D_f only (lr 1e-4). Nothing anchors D_r, so it forgets fast and damages the rest as fast.
- ``rl``, random labels (Golatkar et al. 2020; Hayase et al. 2020): train on D_r plus D_f with
  each forget image relabelled at random (lr 0.013). ``unlearn.rl_labels = "per_batch"`` (the
  default, as OPTML-Group's code): a fresh label from *all* classes (the true one included) every
  epoch, i.e. for every batch a forget image appears in; ``"once_other"``: one label per image for
  the whole run, never the true class.
- ``l1_sparse``, l1-sparse fine-tuning (Jia et al. 2023): fine-tune on D_r with an l1 penalty
  alpha * (1 - e / E) * ||theta||_1 that decays linearly to zero over the E epochs (alpha 1e-4,
  lr 0.01): sparsity first, then recovery.
- ``salun``, saliency unlearning (Fan et al. 2024): the gradient of the forget loss over D_f
  picks the ``salun_ratio`` (0.5) of weights with the largest magnitude (one global threshold);
  then ``rl``, with every other weight frozen (its updates, weight decay included, are masked).
- "LoRA + l1" is one line of configuration: ``--paradigms lora --set unlearn.paradigm_l1=1e-4``
  adds the same decaying l1 penalty to the paper's paradigms' Adam (on the trained variables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.augment import infer_images
from prunelora_keras.config import Config
from prunelora_keras.data import Dataset, UnlearningSplit, num_batches

BASELINES = ("ga", "rl", "l1_sparse", "salun")


@dataclass
class Plan:
    """What a baseline trains on and how."""

    x: np.ndarray
    y: np.ndarray
    optimizer: optax.GradientTransformation
    description: str
    labels_for_epoch: Callable[[int], np.ndarray] | None = None  # labels drawn afresh every epoch (rl_labels = per_batch)
    steps_per_epoch: int = 0  # l1_sparse: the loop's steps per epoch (drop_last included), which its decay counts


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


def sgd_chain(lr: float, cfg: Config, *, ascend: bool = False, l1: optax.GradientTransformation | None = None,
              masks: Sequence[np.ndarray | None] | None = None) -> optax.GradientTransformation:
    """The code bases' SGD (momentum, coupled weight decay) with the method's additions, in order:
    ascent flips the loss gradient only; decay and l1 are added after it; masks come last."""
    u = cfg.unlearn
    parts = []
    if ascend:
        parts.append(optax.scale(-1.0))
    if u.baseline_weight_decay:
        parts.append(optax.add_decayed_weights(u.baseline_weight_decay))
    if l1 is not None:
        parts.append(l1)
    if masks is not None:
        parts.append(masked_updates(masks))
    parts.append(optax.sgd(lr, momentum=u.baseline_momentum or None))
    return optax.chain(*parts)


def saliency_masks(model: keras.Model, train_vars: Sequence[keras.Variable], forget_x: np.ndarray,
                   forget_y: np.ndarray, ds: Dataset, ratio: float, batch_size: int) -> list[np.ndarray]:
    """SalUn's weight saliency: |gradient of the mean forget loss| over D_f (inference mode), and
    1 for exactly round(``ratio`` x n) of the n entries of ``train_vars``: the largest values (one
    global top-k; among equal values the earlier entry, in variable order, wins)."""
    trainable = list(model.trainable_variables)
    chosen = {id(v) for v in train_vars}
    index = [i for i, v in enumerate(trainable) if id(v) in chosen]
    non_trainable = [v.value for v in model.non_trainable_variables]
    mean, std = tuple(ds.mean), tuple(ds.std)

    @jax.jit
    def grad_sum(values, images, labels):
        def loss(vals):
            logits = infer_images(model, vals, non_trainable, images, mean, std)
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


def plan(name: str, model: keras.Model, train_vars: Sequence[keras.Variable], cfg: Config, split: UnlearningSplit,
         ds: Dataset) -> Plan:
    """The data and optimiser of baseline ``name`` for ``model`` (whose ``train_vars`` train)."""
    u = cfg.unlearn
    epochs = max(u.epochs)
    if name == "ga":
        return Plan(split.forget.x, split.forget.y, sgd_chain(u.ga_lr, cfg, ascend=True),
                    f"gradient ascent on D_f ({len(split.forget)} images), lr {u.ga_lr}")
    rl_x = np.concatenate([split.retain.x, split.forget.x])
    per_epoch = None
    if u.rl_labels == "per_batch":
        rl_y = np.concatenate([split.retain.y, split.forget.y])
        is_forget = np.r_[np.zeros(len(split.retain), bool), np.ones(len(split.forget), bool)]
        per_epoch = random_labels_per_epoch(rl_y, is_forget, ds.num_classes, cfg.seed)
        how = "random labels from all classes, new every epoch"
    else:
        rl_y = np.concatenate([split.retain.y, random_other_labels(split.forget.y, ds.num_classes, cfg.seed)])
        how = "one random other label per image"
    if name == "rl":
        return Plan(rl_x, rl_y, sgd_chain(u.rl_lr, cfg), f"D_r + D_f with {how}, lr {u.rl_lr}", per_epoch)
    if name == "l1_sparse":
        steps = num_batches(len(split.retain), u.batch_size, cfg.data.drop_last)
        return Plan(split.retain.x, split.retain.y, sgd_chain(u.l1_lr, cfg, l1=decaying_l1(u.l1_alpha, steps, epochs)),
                    f"fine-tuning on D_r with l1 {u.l1_alpha} decaying to 0 over {epochs} epochs, lr {u.l1_lr}",
                    steps_per_epoch=steps)
    if name == "salun":
        masks = saliency_masks(model, train_vars, split.forget.x, split.forget.y, ds, u.salun_ratio,
                               cfg.data.eval_batch_size)
        return Plan(rl_x, rl_y, sgd_chain(u.salun_lr, cfg, masks=masks),
                    f"{how} on the {u.salun_ratio:.0%} most salient weights, lr {u.salun_lr}", per_epoch)
    raise ValueError(f"unknown baseline {name!r}; baselines: {BASELINES}")
