"""Pools for many-model evaluation: K models retrained from scratch, K runs of an unlearning method.

A pool member is built exactly as the single-model path builds that model with the member's seed:
the same ``unlearning.prepare_method`` (the registry's entry, its plan and trainer) or the same
from-scratch trainer, so member k is the model the single loop would give for seed k. The pool
then trains them together (``ensemble.PoolTrainer``) and scores them (``forgetting_quality.py``).

Example:
    >>> seeds = member_seeds(0, "pruned_lora", 16)  # doctest: +SKIP
    >>> pool = method_pool("pruned_lora", lambda s: dataclasses.replace(ctx, model=plk.copy_model(model), seed=s),
    ...                    seeds)  # doctest: +SKIP
    >>> pool.fit(epochs=5)  # doctest: +SKIP
    >>> forget_logits = pool.logits(forget.x, ctx.mean, ctx.std)  # (16, |D_f|, classes)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from prunelora_keras.config import TrainConfig
from prunelora_keras.ensemble import PoolTrainer, member_seeds  # noqa: F401  (re-exported)
from prunelora_keras.errors import UserError
from prunelora_keras.methods import MethodContext
from prunelora_keras.train import ArrayStream, Trainer, make_optimizer, set_bn_policy


def method_pool(name: str, make_context: Callable[[int], MethodContext], seeds: Sequence[int], *,
                mode: str = "auto", devices: Sequence[Any] | None = None, label: str | None = None,
                verbose: bool = True) -> PoolTrainer:
    """K runs of unlearning method ``name``, one per seed, as one pool.

    Args:
        name: a registered method (``methods.names()``) that prepares a model.
        make_context: seed -> the ``MethodContext`` of that member: a fresh copy of the original
            model (a method may change it in place) and that seed; everything else equal.
        seeds: one per member (data order, dropout, adapter init, random labels).
        mode, devices: how the K axis is mapped and sharded (``ensemble.PoolTrainer``).
        label: the name in progress lines (default ``name``).
        verbose: progress lines.
    Returns:
        the ``PoolTrainer`` (not yet trained); its members train on the whole model (no prefix cache).
    """
    from prunelora_keras.unlearning import on_jax, prepare_method

    if not on_jax():
        raise UserError("many-model pools train with the compiled JAX step: unset KERAS_BACKEND or set it to jax")
    members, streams = [], []
    for seed in seeds:
        ctx = make_context(int(seed))
        prepared = prepare_method(name, ctx, label=label or name, prefix_cache="off", verbose=False)
        plan = prepared.plan
        members.append(prepared.trainer)
        streams.append(plan.stream if plan.stream is not None else
                       ArrayStream(plan.x, plan.y, ctx.options.batch_size, ctx.drop_last, plan.labels_for_epoch))
    return PoolTrainer(members, streams, mode=mode, devices=devices, label=f"{label or name} x{len(seeds)}",
                       verbose=verbose)


def scratch_pool(build_model: Callable[[int], keras.Model], recipe: TrainConfig, x: np.ndarray, y: np.ndarray,
                 batch_size: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 seeds: Sequence[int], *, drop_last: bool = False, mode: str = "auto",
                 devices: Sequence[Any] | None = None, label: str = "retrain", verbose: bool = True) -> PoolTrainer:
    """K models trained from scratch on (x, y) with ``recipe``, one per seed (init and data order).

    Args:
        build_model: seed -> a new, untrained model (called after ``keras.utils.set_random_seed(seed)``).
        recipe: the training recipe (optimiser, schedule, epochs, augmentation, BatchNorm policy).
        x, y: uint8 images and integer labels (for Retrain: D_r).
        batch_size, drop_last: the batches.
        num_classes, mean, std: the classifier's width and the images' normalisation.
        seeds: one per member.
        mode, devices, label, verbose: as ``method_pool``.
    Returns:
        the ``PoolTrainer``; train it ``recipe.epochs`` epochs.
    """
    steps = -(-len(y) // batch_size) if not drop_last else len(y) // batch_size
    members = []
    for seed in seeds:
        keras.utils.set_random_seed(int(seed))
        model = build_model(int(seed))
        set_bn_policy(model, recipe.bn)
        members.append(Trainer(model, make_optimizer(recipe, steps * recipe.epochs), num_classes, mean, std,
                               augment=recipe.augment, mixup_alpha=recipe.mixup_alpha, seed=int(seed), label=label,
                               verbose=False))
    return PoolTrainer(members, [ArrayStream(x, y, batch_size, drop_last) for _ in seeds], mode=mode,
                       devices=devices, label=f"{label} x{len(seeds)}", verbose=verbose)
