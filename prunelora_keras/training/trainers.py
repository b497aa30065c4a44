"""Which trainer runs a recipe: the compiled JAX loop (``loop.Trainer``) on the jax backend, Keras's
``fit`` (``fit_loop.FitTrainer``) on the others. The backend choice is made here and nowhere else."""

from __future__ import annotations

from typing import Any

import keras

from prunelora_keras.data.datasets import Dataset
from prunelora_keras.training.fit_loop import FitTrainer
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer, param_roles
from prunelora_keras.training.recipe import TrainConfig


def on_jax() -> bool:
    """The compiled JAX loop (``train.Trainer``) on the jax backend; Keras's fit elsewhere."""
    return keras.backend.backend() == "jax"


def recipe_optimizer(model: keras.Model, recipe: TrainConfig, steps_per_epoch: int) -> Any:
    """``recipe``'s optimiser for training all of ``model``'s trainable variables for ``recipe.epochs``
    epochs of ``steps_per_epoch`` steps (each variable's role read from the model: airbench's BatchNorm
    biases and whitening bias).

    Args:
        model: the model whose trainable variables all train.
        recipe: the training recipe.
        steps_per_epoch: optimiser steps in one epoch.
    Returns:
        An optax transformation over ``model.trainable_variables``' values.

    Example:
        >>> from prunelora_keras.models import airbench
        >>> tx = recipe_optimizer(airbench(10, widths=(8, 16, 16), seed=0), TrainConfig(norm_lr_scale=64.0), 10)
    """
    return make_optimizer(recipe, steps_per_epoch * recipe.epochs, param_roles(model, model.trainable_variables),
                          steps_per_epoch)


def keras_fit_check(recipe: TrainConfig) -> None:
    """Refuse, in one line, the recipe parts that Keras's fit (the non-JAX backends) does not have.

    Args:
        recipe: the recipe to train with Keras's fit.
    Raises:
        ValueError: naming those parts and the fix (the jax backend).

    Example:
        >>> keras_fit_check(TrainConfig())  # nothing the plain recipe lacks
    """
    extra = [name for name, on in (("nesterov", recipe.nesterov), ("label_smoothing", recipe.label_smoothing),
                                   ("norm_lr_scale", recipe.norm_lr_scale != 1.0), ("lookahead_every", recipe.lookahead_every),
                                   ("whiten_bias_epochs", recipe.whiten_bias_epochs),
                                   ("schedule triangle", recipe.schedule == "triangle"),
                                   ("augment altflip/translate", {"altflip", "translate"} & set(recipe.augment))) if on]
    if extra:
        raise ValueError(f"the recipe's {', '.join(extra)} train with the compiled JAX step only: unset KERAS_BACKEND "
                         f"(or set it to jax)")


def scratch_trainer(model: keras.Model, recipe: TrainConfig, steps: int, ds: Dataset, seed: int, label: str,
                    distribution: Any = None) -> Any:
    """The trainer of a model trained from scratch (the original, Retrain) with ``recipe`` for ``steps``
    steps (``recipe.epochs`` epochs of equal length): the compiled loop on jax, Keras's fit elsewhere."""
    if on_jax():
        return Trainer(model, recipe_optimizer(model, recipe, max(steps // max(recipe.epochs, 1), 1)),
                       num_classes=ds.num_classes, preprocess=ds.preprocess, augment=recipe.augment,
                       mixup_alpha=recipe.mixup_alpha, seed=seed, label=label, distribution=distribution,
                       label_smoothing=recipe.label_smoothing)
    keras_fit_check(recipe)
    return FitTrainer(model, recipe, total_steps=steps, num_classes=ds.num_classes, preprocess=ds.preprocess,
                      augment=recipe.augment, mixup_alpha=recipe.mixup_alpha, seed=seed, label=label)
