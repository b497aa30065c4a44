"""From a method's name to a trainer ready to run: the one path every unlearning run takes.

``prepare_method(name, ctx)`` asks the registry's method for its ``Plan`` and hands it to the one
training loop: ``train.Trainer`` (the compiled JAX step) on the jax backend, Keras's ``fit``
(``fit_loop.FitTrainer``) elsewhere for the methods that have a Keras recipe, with the frozen
prefix replaced by cached features where that is exact and asked for. ``api.unlearn`` and the
experiment (``pipeline``) both call it; the experiment's entry is ``experiment.context.prepare_paradigm``
(a saved original model and a ``Config``). The backend is chosen by ``training.trainers.on_jax``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunelora_keras.errors import UserError
from prunelora_keras.training.fit_loop import FitTrainer
from prunelora_keras.training.trainers import on_jax
from prunelora_keras.methods.base import MethodContext, Plan
from prunelora_keras.methods.registry import get, names
from prunelora_keras.training.prefix_cache import cache_features, feature_bytes, split_frozen_prefix
from prunelora_keras.models.pruning import pruning_diagnostics
from prunelora_keras.training.step import cross_entropy_loss
from prunelora_keras.training.loop import EpochStats, Trainer
from prunelora_keras.training.bn import set_bn_policy


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Prepared:
    """A method ready to train: its plan, the trainer and the data it trains on."""

    name: str
    plan: Plan
    trainer: Any  # train.Trainer (jax) or fit_loop.FitTrainer
    x: Any  # inputs, or the frozen prefix's cached features
    y: np.ndarray | None
    fit_kwargs: dict[str, Any] = field(default_factory=dict)
    cache_facts: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)  # what the pruning step zeroed
    resumable: bool = True  # epoch-end state can be saved and resumed (the compiled JAX loop)

    def fit(self, epochs: int, batch_size: int, drop_last: bool = False, on_epoch_end=None,
            first_epoch: int = 1) -> list[EpochStats]:
        """Train ``epochs`` epochs (numbered from ``first_epoch``); returns their statistics."""
        return self.trainer.fit(self.x, self.y, epochs, batch_size, drop_last, on_epoch_end, first_epoch=first_epoch,
                                **self.fit_kwargs)


def prepare_method(name: str, ctx: MethodContext, *, label: str | None = None, distribution: Any = None,
                   prefix_cache: str = "off", prefix_cache_max_gb: float = 8.0, verbose: bool = True) -> Prepared:
    """Method ``name``'s plan for ``ctx`` and the trainer that runs it.

    Args:
        name: a registered method (``methods.names()``); ``retrain`` is not one that prepares.
        ctx: the model copy, data, options and targets (``methods.MethodContext``).
        label: the name in progress lines (default ``name``).
        distribution: a ``keras.distribution.DataParallel`` (jax backend only).
        prefix_cache: "auto": a plan that allows it trains its suffix on the frozen prefix's cached
            features where that is exact; "off": the whole model.
        prefix_cache_max_gb: host memory the cached features may take.
        verbose: progress lines.
    Returns:
        ``Prepared``; call its ``fit``. ``plk.unlearn`` is this plus ``fit`` and the merged model;
        call it directly to evaluate between epochs or to save and resume the trainer's state, as
        the experiment does.

    Example:
        >>> shared, h = plk.unlearn_options("pruned_lora", rank=4)  # doctest: +SKIP
        >>> ctx = methods.MethodContext(model=model_copy, options=shared, hparams=h, retain=retain,  # doctest: +SKIP
        ...     forget=forget, num_classes=10, preprocess=Preprocess(), seed=0,
        ...     targets=plk.find_targets(model_copy).targets, epochs=5)
        >>> prepared = prepare_method("pruned_lora", ctx)  # doctest: +SKIP
        >>> history = prepared.fit(5, batch_size=128, on_epoch_end=lambda stats: print(stats.epoch))  # doctest: +SKIP
        >>> unlearned = prepared.plan.eval_model()  # doctest: +SKIP
    """
    method = get(name)
    if method.prepare is None:
        raise UserError(f"{name} is not an unlearning method that prepares a model: it is the exact baseline, a new "
                        "model trained from scratch on the retained data")
    if not on_jax() and not method.keras_fit:
        raise _needs_jax(name)
    if type(ctx.hparams) is not method.hparams:
        raise ValueError(f"{name} takes its hyperparameters as {method.hparams.__name__}, got "
                         f"{type(ctx.hparams).__name__}: build them with hparams.check_hparams({method.hparams.__name__}, "
                         "{...}) or plk.unlearn_options")
    if verbose and ctx.progress is None:  # a long preparation (an adversarial search) says where it is
        ctx = dataclasses.replace(ctx, progress=lambda line: log(f"{label or name}: {line}"))
    plan = method.prepare(ctx)
    set_bn_policy(plan.model, ctx.options.bn)  # adapters' model surgery keeps the flags; the same policy, stated
    if verbose and plan.description:
        log(f"{name}: {plan.description}")
    train_model, x, features, cache_facts = plan.model, plan.x, False, {"prefix_cache": False}
    if plan.prefix_cacheable and prefix_cache == "auto" and on_jax() and plan.stream is None:
        train_model, x, features, cache_facts = prefix_cached(plan, ctx, name, prefix_cache_max_gb)
    suffix_paths = {v.path for v in train_model.variables}  # prefix masks can go: nothing in the prefix trains
    masks = {path: m for path, m in plan.masks.items() if path in suffix_paths}
    diagnostics = ({} if plan.pruned is None or ctx.targets.classifier is None else
                   pruning_diagnostics(plan.pruned, ctx.targets.classifier, ctx.forget_classes))
    if on_jax():
        trainer = Trainer(train_model, plan.optimizer, num_classes=plan.num_classes or ctx.num_classes, preprocess=ctx.preprocess, train_vars=plan.train_vars,
                          masks=masks, seed=ctx.seed, label=label or name, features=features, share_key=plan.share_key,
                          distribution=distribution, verbose=verbose and method.trains, loss=plan.loss or cross_entropy_loss,
                          teacher=plan.teacher, joint=plan.joint)
        fit_kwargs: dict[str, Any] = {}
        if plan.labels_for_epoch is not None:
            fit_kwargs["labels_for_epoch"] = plan.labels_for_epoch
        if plan.stream is not None:
            fit_kwargs["stream"] = plan.stream
    else:
        if plan.keras_recipe is None or plan.stream is not None or plan.loss is not None:
            raise _needs_jax(name)  # a method registered with keras_fit=True whose plan has no Keras equivalent
        steps = ctx.steps_per_epoch(len(plan.y)) * ctx.epochs
        trainer = FitTrainer(train_model, plan.keras_recipe, total_steps=steps, num_classes=plan.num_classes or ctx.num_classes, preprocess=ctx.preprocess,
                             train_vars=plan.train_vars, masks=masks, seed=ctx.seed, label=label or name)
        fit_kwargs = {}
    return Prepared(name, plan, trainer, x, plan.y, fit_kwargs, cache_facts, diagnostics, resumable=on_jax())


def _needs_jax(name: str) -> UserError:
    return UserError(f"{name} runs on the jax backend only (its optimiser, loss or data stream has no Keras fit "
                     f"equivalent here); unset KERAS_BACKEND (now {keras.backend.backend()}) or choose one of "
                     f"{', '.join(n for n in names() if get(n).keras_fit)}")


def prefix_cached(plan: Plan, ctx: MethodContext, name: str, max_gb: float) -> tuple[Any, Any, bool, dict[str, Any]]:
    """The trained suffix and the frozen prefix's cached features where the cut is exact and fits."""
    psplit, reason = split_frozen_prefix(plan.model, plan.train_vars)
    if psplit is not None:
        need = feature_bytes(psplit, len(plan.y))
        if need > max_gb * 1e9:
            psplit, reason = None, f"features would take {need / 1e9:.1f} GB > unlearn.prefix_cache_max_gb {max_gb}"
    if psplit is None:
        log(f"{name}: training the whole model ({reason})")
        return plan.model, plan.x, False, {"prefix_cache": False}
    cached = cache_features(psplit, plan.x, ctx.preprocess, ctx.eval_batch_size)
    log(f"{name}: frozen prefix of {len(psplit.prefix_layers)} layers cached once ({cached.nbytes / 1e6:.1f} MB in "
        f"{cached.seconds:.1f} s); training {len(psplit.suffix_layers)} layers on the features")
    return psplit.suffix, cached.features, True, {"prefix_cache": True, "cache_s": cached.seconds,
                                                  "cached_layers": len(psplit.prefix_layers)}
