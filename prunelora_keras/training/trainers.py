"""Which trainer runs a recipe: the compiled JAX loop (``loop.Trainer``) on the jax backend, Keras's
``fit`` (``fit_loop.FitTrainer``) on the others. The backend choice is made here and nowhere else."""

from __future__ import annotations

from typing import Any

import keras

from prunelora_keras.data.datasets import Dataset
from prunelora_keras.training.fit_loop import FitTrainer
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.training.recipe import TrainConfig


def on_jax() -> bool:
    """The compiled JAX loop (``train.Trainer``) on the jax backend; Keras's fit elsewhere."""
    return keras.backend.backend() == "jax"


def scratch_trainer(model: keras.Model, recipe: TrainConfig, steps: int, ds: Dataset, seed: int, label: str,
                    distribution: Any = None) -> Any:
    """The trainer of a model trained from scratch (the original, Retrain) with ``recipe`` for ``steps``
    steps: the compiled loop on jax, Keras's fit elsewhere."""
    if on_jax():
        return Trainer(model, make_optimizer(recipe, steps), num_classes=ds.num_classes, preprocess=ds.preprocess,
                       augment=recipe.augment, mixup_alpha=recipe.mixup_alpha, seed=seed, label=label, distribution=distribution)
    return FitTrainer(model, recipe, total_steps=steps, num_classes=ds.num_classes, preprocess=ds.preprocess,
                      augment=recipe.augment, mixup_alpha=recipe.mixup_alpha, seed=seed, label=label)
