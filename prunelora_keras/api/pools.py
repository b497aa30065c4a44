"""Pools for many-model evaluation: K models retrained from scratch, K runs of an unlearning method.

A pool member is built exactly as the single-model path builds that model with the member's seed:
the same ``unlearning.prepare_method`` (the registry's entry, its plan and trainer) or the same
from-scratch trainer, so member k is the model the single loop would give for seed k. The pool
then trains them together (``training.pool_trainer.PoolTrainer``) and scores them (``forgetting_quality.py``).

Example:
    >>> seeds = member_seeds(0, "pruned_lora", 16)  # doctest: +SKIP
    >>> pool = method_pool("pruned_lora", lambda s: dataclasses.replace(ctx, model=plk.copy_model(model), seed=s),
    ...                    seeds)  # doctest: +SKIP
    >>> pool.fit(epochs=5)  # doctest: +SKIP
    >>> forget_logits = pool.logits(forget.x)  # (16, |D_f|, classes)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import keras
import numpy as np

from prunelora_keras.api.checks import checked_labels, require_epochs, require_logits
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.batches import Rows, num_batches
from prunelora_keras.training.memberwise import MemberwisePool
from prunelora_keras.training.pool_checks import MembersDiffer
from prunelora_keras.training.pool_trainer import PoolTrainer, member_seeds  # noqa: F401
from prunelora_keras.errors import UserError
from prunelora_keras.methods.base import MethodContext
from prunelora_keras.training.loop import ArrayStream, Trainer
from prunelora_keras.training.trainers import recipe_optimizer
from prunelora_keras.models.airbench import init_whitening
from prunelora_keras.training.bn import set_bn_policy


def method_pool(name: str, make_context: Callable[[int], MethodContext], seeds: Sequence[int], *,
                mode: str = "auto", devices: Sequence[Any] | None = None, label: str | None = None,
                verbose: bool = True) -> PoolTrainer:
    """K runs of unlearning method ``name``, one per seed, as one pool.

    Args:
        name: a registered method (``methods.names()``) that prepares a model.
        make_context: seed -> the ``MethodContext`` of that member: a fresh copy of the original
            model (a method may change it in place) and that seed; everything else equal.
        seeds: one per member (data order, dropout, adapter init, random labels).
        mode, devices: how the K axis is mapped and sharded (``training.pool_trainer.PoolTrainer``).
        label: the name in progress lines (default ``name``).
        verbose: progress lines.
    Returns:
        the ``PoolTrainer`` (not yet trained); its members train on the whole model (no prefix
        cache). In mode "auto", members whose steps differ only by what each computed from its own
        model (``pool_checks.MembersDiffer``: SalUn's saliency masks, persistent pruning masks, when
        the members start from different models) give a ``MemberwisePool`` instead, said on stderr.

    Example:
        >>> def context(seed):  # doctest: +SKIP
        ...     keras.utils.set_random_seed(seed)
        ...     return dataclasses.replace(ctx, model=plk.copy_model(original), seed=seed)
        >>> pool = plk.method_pool("lora", context, [1, 2, 3, 4])  # doctest: +SKIP
        >>> pool.fit(epochs=5)  # doctest: +SKIP
    """
    from prunelora_keras.training.trainers import on_jax
    from prunelora_keras.methods.prepare import prepare_method

    if not on_jax():
        raise UserError("many-model pools train with the compiled JAX step: unset KERAS_BACKEND or set it to jax")
    members, streams, output_classes = [], [], None
    for seed in seeds:
        ctx = make_context(int(seed))
        prepared = prepare_method(name, ctx, label=label or name, prefix_cache="off", verbose=False)
        plan = prepared.plan
        members.append(prepared.trainer)
        if plan.num_classes not in (None, ctx.num_classes):  # a shadow class: scored on the data's classes
            output_classes = ctx.num_classes
        streams.append(plan.stream if plan.stream is not None else
                       ArrayStream(plan.x, plan.y, ctx.options.batch_size, ctx.drop_last, plan.labels_for_epoch))
    try:
        pool = PoolTrainer(members, streams, mode=mode, devices=devices, label=f"{label or name} x{len(seeds)}",
                           verbose=verbose)
        pool.output_classes = output_classes
        return pool
    except MembersDiffer as exc:  # each member's step depends on its own model (U-LiRA's shadows, say)
        if mode != "auto" or (devices is not None and len(devices) > 1):
            raise
        print(f"{label or name}: {exc}; its {len(seeds)} members train one after another, each with its own "
              "compiled step (memberwise)", file=sys.stderr, flush=True)
        pool = MemberwisePool(members, streams, label=f"{label or name} x{len(seeds)}", verbose=verbose)
        pool.output_classes = output_classes
        return pool


def scratch_pool(build_model: Callable[[int], keras.Model], recipe: TrainConfig, x: np.ndarray, y: np.ndarray,
                 batch_size: int, num_classes: int, preprocess: Preprocess,
                 seeds: Sequence[int], *, rows: Sequence[np.ndarray] | None = None, drop_last: bool = False,
                 mode: str = "auto", devices: Sequence[Any] | None = None, label: str = "retrain",
                 verbose: bool = True) -> PoolTrainer:
    """K models trained from scratch on (x, y) with ``recipe``, one per seed (init and data order).

    Args:
        build_model: seed -> a new, untrained model (called after ``keras.utils.set_random_seed(seed)``).
        recipe: the training recipe (optimiser, schedule, epochs, augmentation, BatchNorm policy).
        x, y: uint8 images and integer labels (for Retrain: D_r).
        batch_size, drop_last: the batches.
        num_classes: the classifier's width.
        preprocess: how ``x`` becomes the models' input (``Dataset.preprocess``; ``Preprocess()``:
            uint8 images scaled to [0, 1], float inputs as they are).
        seeds: one per member.
        rows: per member, the indices of (x, y) it trains on (U-LiRA's shadows: a half each); all
            members must get the same number (one step count); default: every member all of them.
        mode, devices, label, verbose: as ``method_pool``.
    Returns:
        the ``PoolTrainer``; train it ``recipe.epochs`` epochs.

    Example:
        >>> recipe = TrainConfig(epochs=20, optimizer="adam", lr=1e-3)  # doctest: +SKIP
        >>> oracle = plk.scratch_pool(lambda seed: my_model(), recipe, retain.x, retain.y, 64, 10, Preprocess(),
        ...                           seeds=range(16))  # doctest: +SKIP
        >>> oracle.fit(recipe.epochs)  # doctest: +SKIP
        >>> logits = oracle.logits(forget.x)  # (16, |D_f|, 10)  # doctest: +SKIP
    """
    y = checked_labels(y, "the training data", num_classes)
    require_epochs(recipe.epochs)
    rows = [np.arange(len(y))] * len(seeds) if rows is None else [np.asarray(r) for r in rows]
    if len(rows) != len(seeds) or len({len(r) for r in rows}) > 1:
        raise ValueError(f"rows must give each of the {len(seeds)} members the same number of examples, got "
                         f"{sorted({len(r) for r in rows})} for {len(rows)} members")
    steps = num_batches(len(rows[0]), batch_size, drop_last)
    members = []
    for seed in seeds:
        keras.utils.set_random_seed(int(seed))
        model = build_model(int(seed))
        if require_logits(model) != num_classes:
            raise ValueError(f"build_model gives {model.output_shape[-1]} outputs, num_classes is {num_classes}: "
                             "make them agree")
        member_rows = rows[len(members)]  # airbench's stem, from this member's images (init_whitening's spacing)
        init_whitening(model, Rows(x, member_rows), preprocess)
        set_bn_policy(model, recipe.bn)
        members.append(Trainer(model, recipe_optimizer(model, recipe, steps), num_classes=num_classes,
                               preprocess=preprocess, augment=recipe.augment, mixup_alpha=recipe.mixup_alpha,
                               label_smoothing=recipe.label_smoothing, seed=int(seed), label=label, verbose=False))
    return PoolTrainer(members, [ArrayStream(x[r], y[r], batch_size, drop_last, alternating_flip=int(seed) if "altflip" in recipe.augment else None)
                                 for r, seed in zip(rows, seeds)], mode=mode,
                       devices=devices, label=f"{label} x{len(seeds)}", verbose=verbose)


def unlearn_pool(model: keras.Model, retain: Any, forget: Any, method: str = "pruned_lora", *, k: int = 16,
                 epochs: int = 10, seeds: Sequence[int] | None = None, mode: str = "auto", verbose: bool = True,
                 **options: Any) -> PoolTrainer:
    """K runs of ``plk.unlearn`` on a user's own model, one per seed, trained as one pool.

    Member k is the model ``plk.unlearn(model, retain, forget, method, epochs=epochs, seed=seeds[k],
    **options)`` returns (before merging adapters; within float tolerance). Score the pool against an
    oracle pool (``scratch_pool``: K models retrained without D_f) with ``forgetting_quality`` and
    ``klom`` on ``pool.logits(x)`` (inputs in the model's own domain).

    Args:
        model: a trained functional or Sequential Keras 3 classifier that outputs logits (unchanged).
        retain, forget: D_r and D_f as (x, y) arrays or ``keras.utils.PyDataset``s, as ``plk.unlearn``.
        method: a registered method.
        k: the number of runs (ignored when ``seeds`` is given).
        epochs: training epochs of each run.
        seeds: the runs' seeds (default: K reproducible seeds derived from the method's name).
        mode: how the K axis is mapped ("auto", "vmap", "map", "loop"; ``training.pool_trainer.PoolTrainer``).
        verbose: progress lines.
        **options: the shared options and the method's hyperparameters (``plk.unlearn_options``).
    Returns:
        the trained ``PoolTrainer``.

    Example:
        >>> pool = plk.unlearn_pool(model, (x_r, y_r), (x_f, y_f), "lora", k=16, epochs=5)  # doctest: +SKIP
        >>> unlearned = pool.logits(x_f)  # (16, |D_f|, classes)  # doctest: +SKIP
        >>> score = plk.forgetting_quality(unlearned, oracle.logits(x_f), y_f)  # doctest: +SKIP
    """
    from prunelora_keras.api.library import checked_inputs, unlearn_options, user_context

    opts, hparams = unlearn_options(method, **options)
    epochs = require_epochs(epochs)
    x_r, y_r, x_f, y_f, num_classes = checked_inputs(model, retain, forget)
    seeds = [int(s) for s in seeds] if seeds is not None else member_seeds(0, method, k)
    if len(seeds) < 1:
        raise ValueError("a pool needs at least one seed")

    def context(seed: int) -> MethodContext:  # plk.unlearn's own construction, for that seed
        return user_context(model, (x_r, y_r), (x_f, y_f), num_classes, opts, hparams, seed, epochs)[0]

    pool = method_pool(method, context, seeds, mode=mode, verbose=verbose)
    pool.fit(epochs)
    return pool


def pool_bytes(trainer: Trainer, batch_size: int) -> tuple[int, int, int]:
    """(state bytes per member, working bytes of one member's step, bytes shared by every member) of a
    pool of ``trainer``'s kind. State: trained, non-trainable and optimiser values. Work: the
    compiled step's temporaries and outputs (XLA's own memory analysis; 0 where a backend has
    none). Shared: the frozen values and a teacher, held once. A vmapped pool needs K x (state +
    work); the other modes K x state + one member's work."""

    def nbytes(tree: Any) -> int:
        return int(sum(np.prod(np.shape(a)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(tree)))

    state = nbytes((trainer.train_values, trainer.non_trainable_values, trainer.opt_state))
    shared = nbytes((trainer.frozen_values, trainer.teacher))
    work = 0
    try:
        shape = trainer.model.inputs[0].shape[1:]
        batch = {"train": (np.zeros((batch_size, *shape), np.uint8), np.zeros(batch_size, np.int32))}
        analysis = trainer._step.lower(trainer._state(), trainer._consts(), batch, jax.random.key(0)).compile() \
            .memory_analysis()
        work = int(getattr(analysis, "temp_size_in_bytes", 0)) + int(getattr(analysis, "output_size_in_bytes", 0))
    except Exception:  # noqa: BLE001 - a backend without a memory analysis: state only
        work = 0
    return state, work, shared


def available_bytes() -> int:
    """Memory a pool may use: the accelerator's free bytes, or the host's available memory on CPU."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: no limit we can see
