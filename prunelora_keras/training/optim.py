"""The optimisers and learning-rate schedules the recipes name, with PyTorch's semantics."""

from __future__ import annotations

import jax
import optax

from prunelora_keras.training.recipe import TrainConfig


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule over ``total_steps`` optimiser steps."""
    total_steps = max(total_steps, 1)
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, total_steps)
    if cfg.schedule == "warmup_cosine":
        warmup = min(cfg.warmup_steps, total_steps - 1)
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total_steps)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def _is_matrix(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optimiser a recipe names, matching PyTorch's semantics.

    sgd: torch.optim.SGD with momentum and *coupled* weight decay (added to the gradient) on
    every parameter. adamw: decoupled weight decay on matrices only (ndim >= 2), as big_vision.
    adam: plain Adam (torch's default betas and eps). Clipping, when set, comes first.
    """
    lr = make_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "sgd":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append(optax.sgd(lr, momentum=cfg.momentum or None))
    elif cfg.optimizer == "adam":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))  # torch Adam's L2 form
        parts.append(optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))
    elif cfg.optimizer == "adamw":
        parts.append(optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay, mask=_is_matrix))
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    return optax.chain(*parts)
