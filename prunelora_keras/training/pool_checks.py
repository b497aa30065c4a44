"""What pool members must share: a pool (``training.pool_trainer.PoolTrainer``) trains every member with the first
member's step, so members that would compute another step are refused here, not trained wrongly.

Compared: the trained/frozen/non-trainable values' layout, the masks, each layer's config (names
aside: built models get new names), the loss (its code and the values it closes over), the
normalisation, augmentation and classes, and the optimiser, by the updates it makes from fixed
parameters and seeded gradients over a few steps (optax transformations are closures: comparing
what they do is the one comparison that sees a learning rate, a schedule or a weight decay).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunelora_keras.training.loop import Trainer


def _layout(trainer: Trainer) -> tuple:
    """What must agree for members to share one step: the trained, frozen and non-trainable values'
    shapes and dtypes, and which of the model's variables train (layer names may differ)."""

    def shapes(values):
        return tuple((tuple(np.shape(v)), str(v.dtype)) for v in values)

    return (trainer.spec.train_index, shapes(trainer.train_values), shapes(trainer.frozen_values),
            shapes(trainer.non_trainable_values))


def _same_value(a: Any, b: Any) -> bool:
    """Equal values, as a step that closes over them would see them (arrays by content, functions by
    ``_same_function``, anything else by ``==`` or, failing that, identity)."""
    if callable(a) and callable(b) and hasattr(a, "__code__"):
        return _same_function(a, b)
    if isinstance(a, (np.ndarray, jax.Array)) or isinstance(b, (np.ndarray, jax.Array)):
        return np.shape(a) == np.shape(b) and bool(np.array_equal(np.asarray(a), np.asarray(b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a usable ==: only the same object is the same
        return a is b


def _same_function(f: Callable, g: Callable) -> bool:
    """The same code closing over the same values (a loss built twice by one factory with one set of
    hyperparameters is the same loss; with another alpha or temperature it is not)."""
    if f is g:
        return True
    code_f, code_g = getattr(f, "__code__", None), getattr(g, "__code__", None)
    if code_f is None or code_f is not code_g:
        return False
    cells = [c.cell_contents for c in f.__closure__ or ()], [c.cell_contents for c in g.__closure__ or ()]
    return _same_value(*cells) and _same_value(f.__defaults__, g.__defaults__)


def _without_names_and_seeds(config: Any) -> Any:
    """A layer config without what legitimately differs between members: names (built models get new
    ones) and seeds (initialisers' and dropout's: their state lives in variables, per member)."""
    if isinstance(config, dict):
        return {k: _without_names_and_seeds(v) for k, v in config.items()
                if k != "name" and k != "seed" and not k.endswith("_seed")}
    if isinstance(config, (list, tuple)):
        return [_without_names_and_seeds(v) for v in config]
    return config


def _layer_configs(trainer: Trainer) -> list:
    """Each layer's class and config, names and seeds aside: what the step computes."""
    out = []
    for layer in trainer.model.layers:
        try:
            config = _without_names_and_seeds(layer.get_config())
        except NotImplementedError:
            config = {}
        out.append((type(layer).__name__, repr(config)))
    return out


def _optimizer_probe(trainer: Trainer, params: list, steps: int = 3) -> list:
    """The updates ``trainer``'s optimiser makes on fixed params and seeded gradients over a few steps:
    equal for equal optimisers (learning rate, schedule, weight decay, momentum, clipping)."""
    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.normal(size=np.shape(p)).astype(np.asarray(p).dtype)) for p in params]
    state, out = trainer.spec.optimizer.init(params), []
    for _ in range(steps):
        updates, state = trainer.spec.optimizer.update(grads, state, params)
        out.append([np.asarray(u) for u in updates])
    return out


class MembersDiffer(ValueError):
    """Members whose steps differ only by what each computed from its own model or data (its
    optimiser's masks, e.g. SalUn's saliency, or its enforced pruning masks): they cannot share one
    compiled step, but each can train on its own (``memberwise.MemberwisePool``)."""


def check_members(members: Sequence[Trainer]) -> None:
    """Refuse members that would not compute the same step: the pool trains every member with the
    first member's step (its model, optimiser, loss, normalisation, augmentation, masks).

    Raises:
        ValueError: one line naming what differs and which member (``MembersDiffer`` where only
            the masks or the optimiser's updates differ).
    """
    first = members[0]
    if any(m.features or m.placement is not None for m in members):
        raise ValueError("pool members train on images on one device each (no features, no distribution)")
    if len({_layout(m) for m in members}) != 1:
        raise ValueError("pool members must share one architecture and train the same variables")
    masks = [[np.zeros(0) if a is None else a for a in m.spec.masks] for m in members]
    if not all_equal(masks):
        raise MembersDiffer("pool members must enforce the same masks")
    fields = ("num_classes", "preprocess", "augment", "mixup_alpha", "features", "joint")
    layers, probe = _layer_configs(first), None
    for k, m in enumerate(members[1:], start=1):
        for name in fields:
            if not _same_value(getattr(m.spec, name), getattr(first.spec, name)):
                raise ValueError(f"pool member {k} has another {name} ({getattr(m.spec, name)!r}) than member 0 "
                                 f"({getattr(first.spec, name)!r}): a pool trains every member with one step")
        if not _same_function(m.spec.loss, first.spec.loss):
            raise ValueError(f"pool member {k} has another loss than member 0: a pool trains every member with one step")
        if _layer_configs(m) != layers:
            raise ValueError(f"pool member {k}'s layers are configured differently from member 0's: a pool trains "
                             "every member with one model")
        if m.spec.optimizer is not first.spec.optimizer:
            probe = probe if probe is not None else _optimizer_probe(first, first.train_values)
            if not _same_value(_optimizer_probe(m, first.train_values), probe):
                raise MembersDiffer(f"pool member {k}'s optimiser updates differently from member 0's (learning rate, "
                                 "schedule, weight decay, momentum or clipping): a pool trains every member with one "
                                 "optimiser")


def all_equal(trees: Sequence[Any]) -> bool:
    first = jax.tree_util.tree_leaves(trees[0])
    return all(all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, jax.tree_util.tree_leaves(t)))
               for t in trees[1:])
