"""From a method's name to a trainer ready to run: the one path every unlearning run takes.

``prepare_method(name, ctx)`` asks the registry's method for its ``Plan`` and hands it to the one
training loop: ``train.Trainer`` (the compiled JAX step) on the jax backend, Keras's ``fit``
(``fit_loop.FitTrainer``) elsewhere for the methods that have a Keras recipe, with the frozen
prefix replaced by cached features where that is exact and asked for. ``api.unlearn`` and the
experiment (``pipeline``) both call it; ``prepare_paradigm`` is the experiment's entry (a saved
original model and a ``Config``). The backend choice is made here and nowhere else (``on_jax``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunelora_keras.config import Config, TrainConfig
from prunelora_keras.conv import FlatDense
from prunelora_keras.data import Dataset, Subset, UnlearningSplit
from prunelora_keras.errors import UserError
from prunelora_keras.fit_loop import FitTrainer
from prunelora_keras.lora import replace_layers
from prunelora_keras.methods import MethodContext, Plan, get, names
from prunelora_keras.paradigms import config_targets
from prunelora_keras.precision import training_model
from prunelora_keras.prefix_cache import cache_features, feature_bytes, split_frozen_prefix
from prunelora_keras.pruning import pruning_diagnostics
from prunelora_keras.step import cross_entropy_loss
from prunelora_keras.train import EpochStats, Trainer, make_optimizer, set_bn_policy


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def on_jax() -> bool:
    """The compiled JAX loop (``train.Trainer``) on the jax backend; Keras's fit elsewhere."""
    return keras.backend.backend() == "jax"


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
        >>> ctx = methods.MethodContext(model_copy, plk.unlearn_options(), retain, forget, 10,  # doctest: +SKIP
        ...                             (0.0,), (1.0,), 0, plk.find_targets(model_copy).targets, epochs=5)
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
    plan = method.prepare(ctx)
    set_bn_policy(plan.model, ctx.options.bn)  # adapters' model surgery keeps the flags; the same policy, stated
    if verbose and plan.description:
        log(f"{name}: {plan.description}")
    train_model, x, features, cache_facts = plan.model, plan.x, False, {"prefix_cache": False}
    if plan.prefix_cacheable and prefix_cache == "auto" and on_jax() and plan.stream is None:
        train_model, x, features, cache_facts = _prefix_cached(plan, ctx, name, prefix_cache_max_gb)
    suffix_paths = {v.path for v in train_model.variables}  # prefix masks can go: nothing in the prefix trains
    masks = {path: m for path, m in plan.masks.items() if path in suffix_paths}
    diagnostics = ({} if plan.pruned is None or ctx.targets.classifier is None else
                   pruning_diagnostics(plan.pruned, ctx.targets.classifier, ctx.forget_classes))
    if on_jax():
        trainer = Trainer(train_model, plan.optimizer, ctx.num_classes, ctx.mean, ctx.std, train_vars=plan.train_vars,
                          masks=masks, seed=ctx.seed, label=label or name, features=features, share_key=plan.share_key,
                          distribution=distribution, verbose=verbose, loss=plan.loss or cross_entropy_loss,
                          teacher=plan.teacher)
        fit_kwargs: dict[str, Any] = {}
        if plan.labels_for_epoch is not None:
            fit_kwargs["labels_for_epoch"] = plan.labels_for_epoch
        if plan.stream is not None:
            fit_kwargs["stream"] = plan.stream
    else:
        if plan.keras_recipe is None or plan.stream is not None or plan.loss is not None:
            raise _needs_jax(name)  # a method registered with keras_fit=True whose plan has no Keras equivalent
        steps = ctx.steps_per_epoch(len(plan.y)) * ctx.epochs
        trainer = FitTrainer(train_model, plan.keras_recipe, steps, ctx.num_classes, ctx.mean, ctx.std,
                             train_vars=plan.train_vars, masks=masks, seed=ctx.seed, label=label or name)
        fit_kwargs = {}
    return Prepared(name, plan, trainer, x, plan.y, fit_kwargs, cache_facts, diagnostics, resumable=on_jax())


def _needs_jax(name: str) -> UserError:
    return UserError(f"{name} runs on the jax backend only (its optimiser, loss or data stream has no Keras fit "
                     f"equivalent here); unset KERAS_BACKEND (now {keras.backend.backend()}) or choose one of "
                     f"{', '.join(n for n in names() if get(n).keras_fit)}")


def _prefix_cached(plan: Plan, ctx: MethodContext, name: str, max_gb: float) -> tuple[Any, Any, bool, dict[str, Any]]:
    """The trained suffix and the frozen prefix's cached features where the cut is exact and fits."""
    psplit, reason = split_frozen_prefix(plan.model, plan.train_vars)
    if psplit is not None:
        need = feature_bytes(psplit, len(plan.y))
        if need > max_gb * 1e9:
            psplit, reason = None, f"features would take {need / 1e9:.1f} GB > unlearn.prefix_cache_max_gb {max_gb}"
    if psplit is None:
        log(f"{name}: training the whole model ({reason})")
        return plan.model, plan.x, False, {"prefix_cache": False}
    cached = cache_features(psplit, plan.x, ctx.mean, ctx.std, ctx.eval_batch_size)
    log(f"{name}: frozen prefix of {len(psplit.prefix_layers)} layers cached once ({cached.nbytes / 1e6:.1f} MB in "
        f"{cached.seconds:.1f} s); training {len(psplit.suffix_layers)} layers on the features")
    return psplit.suffix, cached.features, True, {"prefix_cache": True, "cache_s": cached.seconds,
                                                  "cached_layers": len(psplit.prefix_layers)}


def scratch_trainer(model: keras.Model, recipe: TrainConfig, steps: int, ds: Dataset, seed: int, label: str,
                    distribution: Any = None) -> Any:
    """The trainer of a model trained from scratch (the original, Retrain) with ``recipe`` for ``steps``
    steps: the compiled loop on jax, Keras's fit elsewhere."""
    if on_jax():
        return Trainer(model, make_optimizer(recipe, steps), ds.num_classes, ds.mean, ds.std, augment=recipe.augment,
                       mixup_alpha=recipe.mixup_alpha, seed=seed, label=label, distribution=distribution)
    return FitTrainer(model, recipe, steps, ds.num_classes, ds.mean, ds.std, augment=recipe.augment,
                      mixup_alpha=recipe.mixup_alpha, seed=seed, label=label)


def config_context(cfg: Config, model: keras.Model, ds: Dataset, split: UnlearningSplit) -> MethodContext:
    """The ``MethodContext`` of the experiment: the package's model, D_r and D_f of ``split``, ``cfg``'s options."""
    return MethodContext(model, cfg.unlearn, split.retain, split.forget, ds.num_classes, tuple(ds.mean),
                         tuple(ds.std), cfg.seed, config_targets(cfg), cfg.data.drop_last, cfg.data.eval_batch_size,
                         max(cfg.unlearn.epochs), tuple(split.forget_classes))


def prepare_paradigm(name: str, cfg: Config, original_ckpt: str, ds: Dataset, split: UnlearningSplit,
                     distribution: Any = None) -> Prepared:
    """Load the original model and prepare method ``name`` on it, as the experiment runs it.

    The BatchNorm policy (``unlearn.bn``) is applied before the method captures the variables it
    trains: with ``freeze`` BatchNorm's gamma and beta are no longer trainable variables.
    """
    u = cfg.unlearn
    keras.utils.set_random_seed(cfg.seed)
    original = keras.saving.load_model(original_ckpt, compile=False, safe_mode=True)
    original = training_model(with_flat_dense(original), u.precision)
    set_bn_policy(original, u.bn)
    return prepare_method(name, config_context(cfg, original, ds, split), distribution=distribution,
                          prefix_cache=u.prefix_cache, prefix_cache_max_gb=u.prefix_cache_max_gb)


def with_flat_dense(model: keras.Model) -> keras.Model:
    """``model`` with every plain Dense on token inputs (rank >= 3) as a ``FlatDense``.

    Models built by this version already use ``FlatDense``; checkpoints from before it (or a
    user's own models) hold plain Dense layers, whose training step is slower on XLA:CPU.
    Same weights and outputs; ``model`` itself when nothing changes.
    """

    def on_tokens(layer) -> bool:
        return type(layer) is keras.layers.Dense and len(layer.input.shape) >= 3

    if not any(on_tokens(layer) for layer in model.layers):
        return model
    return replace_layers(model, lambda layer: FlatDense.from_config(layer.get_config()) if on_tokens(layer) else None)


def training_inputs(plan: Plan, cfg: Config, ds: Dataset, retain: Subset) -> tuple[keras.Model, Any, bool, dict]:
    """(model to train, inputs, inputs-are-features, facts) for ``plan`` on ``retain`` under ``cfg``
    (the benchmarks' view of the prefix cache)."""
    ctx = MethodContext(plan.model, cfg.unlearn, retain, retain, ds.num_classes, tuple(ds.mean), tuple(ds.std),
                        cfg.seed, config_targets(cfg), cfg.data.drop_last, cfg.data.eval_batch_size, 1)
    if cfg.unlearn.prefix_cache == "off" or not on_jax():
        return plan.model, retain.x, False, {"prefix_cache": False}
    plan = Plan(plan.model, plan.train_vars, plan.optimizer, x=retain.x, y=retain.y)
    return _prefix_cached(plan, ctx, "benchmark", cfg.unlearn.prefix_cache_max_gb)
