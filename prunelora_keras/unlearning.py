"""Preparing one unlearning method for the training loop: model, variables, masks, optimiser, data.

``prepare_paradigm`` turns a method's name and the run's configuration into everything the one
training loop needs (``Prepared``): the recipe's model (pruned, with adapters, BatchNorm policy
applied), the trainer (the compiled JAX loop, or Keras's fit on other backends) with its optimiser
and masks, and the data it trains on. The pipeline then only trains, evaluates and saves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import optax

from prunelora_keras import baselines
from prunelora_keras.baselines import BASELINES
from prunelora_keras.config import Config, TrainConfig
from prunelora_keras.conv import FlatDense
from prunelora_keras.data import Dataset, Subset, UnlearningSplit, num_batches
from prunelora_keras.errors import UserError
from prunelora_keras.fit_loop import FitTrainer
from prunelora_keras.lora import replace_layers
from prunelora_keras.paradigms import CLASSIFIER, Recipe, build_recipe
from prunelora_keras.precision import training_model
from prunelora_keras.prefix_cache import cache_features, feature_bytes, split_frozen_prefix
from prunelora_keras.pruning import pruning_diagnostics
from prunelora_keras.train import Trainer, make_optimizer, set_bn_policy


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Prepared:
    """A method ready to train: its recipe, trainer and data, and facts for its results rows."""

    recipe: Recipe
    trainer: Any  # train.Trainer (jax) or fit_loop.FitTrainer
    x: Any  # images, or the frozen prefix's cached features
    y: np.ndarray
    fit_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. labels drawn afresh every epoch
    cache_facts: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)  # what the pruning step zeroed
    resumable: bool = True  # epoch-end state can be saved and resumed (the compiled JAX loop)


def prepare_paradigm(name: str, cfg: Config, original_ckpt: str, ds: Dataset, split: UnlearningSplit,
                     distribution: Any = None) -> Prepared:
    """Load the original model and prepare method ``name`` (a paradigm or a baseline) on it.

    The BatchNorm policy (``unlearn.bn``) is applied before the recipe captures the variables it
    trains: with ``freeze`` BatchNorm's gamma and beta are no longer trainable variables.
    """
    u = cfg.unlearn
    keras.utils.set_random_seed(cfg.seed)
    original = keras.saving.load_model(original_ckpt, compile=False, safe_mode=True)
    original = training_model(with_flat_dense(original), u.precision)
    baseline = name in BASELINES
    # The BatchNorm policy first: with "freeze" its gamma and beta stop being trainable variables, and
    # the recipe must not capture them as variables to train.
    set_bn_policy(original, u.bn)
    recipe = build_recipe("finetune" if baseline else name, original, cfg)  # baselines train the whole model
    set_bn_policy(recipe.model, u.bn)  # adapters' model surgery keeps the flags; the same policy, stated
    total = max(u.epochs)
    steps = num_batches(len(split.retain), u.batch_size, cfg.data.drop_last) * total
    unlearn_recipe = TrainConfig(epochs=total, optimizer=u.optimizer, lr=u.lr, weight_decay=u.weight_decay,
                                 schedule="constant")
    if baseline:
        if not on_jax():
            raise UserError(f"{name}: the baselines run on the jax backend only; unset KERAS_BACKEND or drop {name} "
                            "from --paradigms")
        method = baselines.plan(name, recipe.model, recipe.train_vars, cfg, split, ds)
        print(f"{name}: {method.description}", file=sys.stderr, flush=True)
        train_model, train_x, train_y, features = recipe.model, method.x, method.y, False
        cache_facts = {"prefix_cache": False}
        steps = num_batches(len(train_y), u.batch_size, cfg.data.drop_last) * total
        optimizer, share_key = method.optimizer, None
    else:
        train_model, train_x, features, cache_facts = training_inputs(recipe, cfg, ds, split.retain)
        train_y = split.retain.y
        optimizer = make_optimizer(unlearn_recipe, steps)
        if u.paradigm_l1 > 0:  # e.g. "LoRA + l1": the l1-sparse penalty on the paradigm's trained variables
            optimizer = optax.chain(baselines.decaying_l1(u.paradigm_l1, steps // total, total), optimizer)
        share_key = f"unlearn:{u.optimizer}:{u.lr}:{u.weight_decay}:{steps}:{u.bn}:l1={u.paradigm_l1}"
    # masks on prefix variables can be dropped: nothing in the prefix trains, so its zeros stay
    suffix_paths = {v.path for v in train_model.variables}
    masks = {path: m for path, m in recipe.masks.items() if path in suffix_paths}
    diagnostics = ({} if recipe.pruned is None else
                   pruning_diagnostics(recipe.pruned, CLASSIFIER, split.forget_classes))
    if on_jax():
        trainer = Trainer(train_model, optimizer, ds.num_classes, ds.mean, ds.std,
                          train_vars=recipe.train_vars, masks=masks, seed=cfg.seed, label=name, features=features,
                          share_key=share_key, distribution=distribution)
    else:
        trainer = FitTrainer(train_model, unlearn_recipe, steps, ds.num_classes, ds.mean, ds.std,
                             train_vars=recipe.train_vars, masks=masks, seed=cfg.seed, label=name)
    fit_kwargs = {"labels_for_epoch": method.labels_for_epoch} if baseline else {}
    return Prepared(recipe, trainer, train_x, train_y, fit_kwargs, cache_facts, diagnostics, resumable=on_jax())


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


def training_inputs(recipe: Recipe, cfg: Config, ds: Dataset, retain: Subset
                    ) -> tuple[keras.Model, Any, bool, dict[str, Any]]:
    """What the loop trains on: the whole model on images, or (``unlearn.prefix_cache = "auto"``
    and exact) the trained suffix on the frozen prefix's cached features.

    Returns (model to train, inputs, inputs-are-features, facts for the results row).
    """
    if cfg.unlearn.prefix_cache == "off" or not on_jax():
        return recipe.model, retain.x, False, {"prefix_cache": False}
    psplit, reason = split_frozen_prefix(recipe.model, recipe.train_vars)
    if psplit is not None:
        need = feature_bytes(psplit, len(retain))
        if need > cfg.unlearn.prefix_cache_max_gb * 1e9:
            psplit, reason = None, (f"features would take {need / 1e9:.1f} GB > unlearn.prefix_cache_max_gb "
                                    f"{cfg.unlearn.prefix_cache_max_gb}")
    if psplit is None:
        log(f"{recipe.name}: training the whole model ({reason})")
        return recipe.model, retain.x, False, {"prefix_cache": False}
    cached = cache_features(psplit, retain.x, ds.mean, ds.std, cfg.data.eval_batch_size)
    log(f"{recipe.name}: frozen prefix of {len(psplit.prefix_layers)} layers cached once "
        f"({cached.nbytes / 1e6:.1f} MB in {cached.seconds:.1f} s); training {len(psplit.suffix_layers)} layers "
        f"on the features")
    return psplit.suffix, cached.features, True, {"prefix_cache": True, "cache_s": cached.seconds,
                                                  "cached_layers": len(psplit.prefix_layers)}


def on_jax() -> bool:
    """The compiled JAX loop (``train.Trainer``) on the jax backend; Keras's fit elsewhere."""
    return keras.backend.backend() == "jax"


