"""The optimisers and learning-rate schedules the recipes name, with PyTorch's semantics.

Besides the plain SGD/Adam/AdamW recipes, airbench94's (Jordan 2024): Nesterov SGD whose
normalisation parameters take a larger rate (``norm_lr_scale``) at the same per-step decay, a
triangular rate, a whitening stem whose bias stops training after some epochs, and a lookahead
towards an exponential moving average of the weights. Each is an optax transformation here, so the
compiled step, its donated state and the resumable checkpoints carry them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import keras
import optax

from prunelora_keras.training.recipe import TrainConfig

ROLES = ("weight", "norm", "whiten_bias")


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
    if cfg.schedule == "triangle":  # airbench: linear from start to 1 until the peak, then down to end
        peak = int(total_steps * cfg.peak_fraction)
        return optax.join_schedules([
            optax.linear_schedule(cfg.lr * cfg.start_factor, cfg.lr, max(peak, 1)),
            optax.linear_schedule(cfg.lr, cfg.lr * cfg.end_factor, max(total_steps - peak, 1))], [peak])
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def param_roles(model: keras.Model, variables: Sequence[keras.Variable]) -> list[str]:
    """Each variable's role in a recipe: ``"norm"`` (a normalisation layer's parameter: airbench's
    BatchNorm biases, trained at ``norm_lr_scale`` times the rate), ``"whiten_bias"`` (a whitening
    stem's bias: trained ``whiten_bias_epochs`` epochs) or ``"weight"`` (everything else).

    Args:
        model: the model that owns ``variables``.
        variables: the trained variables, in the order the optimiser sees their values.
    Returns:
        One role per variable.

    Example:
        >>> from prunelora_keras.models import airbench
        >>> model = airbench(10, widths=(8, 16, 16), seed=0)
        >>> roles = param_roles(model, model.trainable_variables)
        >>> roles[0], roles.count("norm")
        ('whiten_bias', 6)
    """
    from prunelora_keras.models.airbench import PatchWhitening

    norm_types = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)
    role = {}
    for layer in model._flatten_layers(include_self=False):
        for v in layer.trainable_weights:
            if isinstance(layer, norm_types):
                role.setdefault(id(v), "norm")
            elif isinstance(layer, PatchWhitening) and v is getattr(layer, "bias", None):
                role.setdefault(id(v), "whiten_bias")
    return [role.get(id(v), "weight") for v in variables]


class LookaheadState(NamedTuple):
    count: jax.Array
    ema: Any


def lookahead_ema(every: int, decay: float, power: float, total_steps: int) -> optax.GradientTransformation:
    """airbench's lookahead as the last transformation of a chain: every ``every`` steps the EMA moves
    towards the updated weights, ``ema <- ema + (1 - a) (w - ema)`` with ``a = decay * (t / T) ** power``,
    and the weights are set to it; at step ``T`` the weights take the EMA, whatever the step.

    The updates it returns move the parameters to their new values, so the optimiser's state holds the
    EMA and a resumed run continues it. (airbench also averages BatchNorm's running statistics; they are
    not parameters here, so they keep the trained weights' recent batches.)

    Args:
        every: steps between syncs (airbench: 5).
        decay, power: the EMA's decay at step t is ``decay * (t / total_steps) ** power``.
        total_steps: the training's length T.
    Returns:
        An optax transformation, the last of a chain.

    Example:
        >>> tx = optax.chain(optax.sgd(1.0), lookahead_ema(2, 0.5, 0.0, 4))
        >>> params = [jnp.zeros(())]
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update([jnp.ones(())], state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> float(params[0])  # w: 0 -> -1 -> -2; the EMA: 0 + 0.5 * (-2 - 0)
        -1.0
    """
    def init(params):
        return LookaheadState(jnp.zeros([], jnp.int32), jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params):
        count = state.count + 1
        alpha = decay * (count.astype(jnp.float32) / total_steps) ** power
        sync = count % every == 0
        take = jnp.logical_or(sync, count >= total_steps)
        new = jax.tree.map(lambda p, u: p + u, params, updates)
        ema = jax.tree.map(lambda e, w: jnp.where(sync, e + (1 - alpha).astype(e.dtype) * (w - e), e), state.ema, new)
        out = jax.tree.map(lambda p, w, e: jnp.where(take, e, w) - p, params, new, ema)
        return out, LookaheadState(count, ema)

    return optax.GradientTransformation(init, update)


class CountState(NamedTuple):
    count: jax.Array


def freeze_after(steps: int, frozen: Sequence[bool]) -> optax.GradientTransformation:
    """Zero the updates of the ``frozen`` leaves from step ``steps + 1`` on (airbench's whitening bias):
    the values stay where the first ``steps`` steps left them, whatever momentum or decay still hold.

    Args:
        steps: the steps that still update them.
        frozen: one flag per value of the list of updates.
    Returns:
        An optax transformation over a list of values.

    Example:
        >>> tx = freeze_after(1, [True])
        >>> state = tx.init([jnp.zeros(())])
        >>> [float(tx.update([jnp.ones(())], tx.init([jnp.zeros(())]), None)[0][0]),
        ...  float(tx.update([jnp.ones(())], CountState(jnp.ones([], jnp.int32)), None)[0][0])]
        [1.0, 0.0]
    """
    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        count = state.count + 1
        out = [jnp.where(count > steps, jnp.zeros_like(u), u) if f else u for u, f in zip(updates, frozen)]
        return out, CountState(count)

    return optax.GradientTransformation(init, update)


def _per_leaf(factors: Sequence[float]) -> optax.GradientTransformation:
    """Multiply each update by its own factor (a list of floats, one per trained value)."""
    return optax.stateless(lambda updates, params=None: [u * f for u, f in zip(updates, factors)])


def _decay_per_leaf(coefficients: Sequence[float]) -> optax.GradientTransformation:
    """torch's coupled L2 with one coefficient per value: ``g + c * p``."""
    return optax.stateless(lambda updates, params: [u + c * p for u, c, p in zip(updates, coefficients, params)])


def _is_matrix(params):
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig, total_steps: int, roles: Sequence[str] | None = None,
                   steps_per_epoch: int = 0) -> optax.GradientTransformation:
    """The optimiser a recipe names, matching PyTorch's semantics.

    sgd: torch.optim.SGD with momentum (Nesterov's with ``nesterov``) and *coupled* weight decay
    (added to the gradient) on every parameter; with ``norm_lr_scale`` s, the normalisation parameters
    take s times the rate and 1/s the L2 coefficient, so their per-step decay is the others'
    (airbench's bias scaler). adamw: decoupled weight decay on matrices only (ndim >= 2), as big_vision.
    adam: plain Adam (torch's default betas and eps). Clipping, when set, comes first; the whitening
    bias's freeze and the lookahead come last.

    Args:
        cfg: the recipe.
        total_steps: the optimiser steps of the whole training (the schedule's and lookahead's length).
        roles: ``param_roles`` of the trained values, needed by ``norm_lr_scale`` and
            ``whiten_bias_epochs``.
        steps_per_epoch: steps of one epoch, needed by ``whiten_bias_epochs``.
    Returns:
        An optax transformation over the list of trained values.

    Example:
        >>> tx = make_optimizer(TrainConfig(lr=0.1, momentum=0.0), 10)
        >>> round(float(tx.update([jnp.ones(())], tx.init([jnp.zeros(())]), [jnp.zeros(())])[0][0]), 6)
        -0.1
    """
    lr = make_schedule(cfg, total_steps)
    needs_roles = cfg.norm_lr_scale != 1.0 or cfg.whiten_bias_epochs > 0
    if needs_roles and roles is None:
        raise ValueError("norm_lr_scale and whiten_bias_epochs need each value's role: pass "
                         "roles=param_roles(model, trained_variables)")
    if cfg.whiten_bias_epochs > 0 and steps_per_epoch < 1:
        raise ValueError("whiten_bias_epochs needs steps_per_epoch >= 1")
    if cfg.norm_lr_scale != 1.0 and cfg.optimizer != "sgd":
        raise ValueError(f"norm_lr_scale applies to sgd, not {cfg.optimizer}: set it to 1 or use optimizer sgd")
    if cfg.nesterov and cfg.optimizer != "sgd":
        raise ValueError(f"nesterov applies to sgd, not {cfg.optimizer}: drop it or use optimizer sgd")
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "sgd" and roles is not None and cfg.norm_lr_scale != 1.0:
        scale = [cfg.norm_lr_scale if r == "norm" else 1.0 for r in roles]
        if cfg.weight_decay:
            parts.append(_decay_per_leaf([cfg.weight_decay / f for f in scale]))
        if cfg.momentum:
            parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
        parts += [optax.scale_by_learning_rate(lr), _per_leaf(scale)]
    elif cfg.optimizer == "sgd":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.optimizer == "adam":
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))  # torch Adam's L2 form
        parts.append(optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))
    elif cfg.optimizer == "adamw":
        parts.append(optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay, mask=_is_matrix))
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    if cfg.whiten_bias_epochs > 0:
        parts.append(freeze_after(cfg.whiten_bias_epochs * steps_per_epoch, [r == "whiten_bias" for r in roles]))
    if cfg.lookahead_every > 0:
        parts.append(lookahead_ema(cfg.lookahead_every, cfg.lookahead_decay, cfg.lookahead_power, max(total_steps, 1)))
    return optax.chain(*parts)
