"""Selective Synaptic Dampening (Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without
Retraining Through Selective Synaptic Dampening", AAAI 2024), one entry.

No training. Two gradient passes, in inference mode, estimate each parameter's importance as a
diagonal Fisher: the squared gradient of each batch's mean cross-entropy, averaged over the
batches, once over D_f (``imp_f``) and once over the whole training set D = D_r + D_f
(``imp_D``). A parameter much more important to D_f than to D, ``imp_f > alpha x imp_D``, is
dampened: multiplied by ``min(lambda x imp_D / imp_f, 1)``, never enlarged. Everything else is
left as it is. This is ``ParameterPerturber.calc_importance`` and ``modify_weight`` of
github.com/if-loops/selective-synaptic-dampening (``src/ssd.py``), with its defaults: alpha 10
(``ssd.alpha``; their ViT class-forgetting runs use 5), lambda 1 (``ssd.dampening``), batches of 64
(``ssd.grad_batch``). Every trainable variable takes part, BatchNorm's scale and offset included
(their ``named_parameters()``); BatchNorm's running statistics are not parameters.

The loop then trains nothing: the plan has no trained variables and an empty stream, so every
epoch column holds the same dampened model and the time per epoch is zero. SSD's cost is its two
gradient passes, which the experiment reports as ``prepare_s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import optax

from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.common import fold_gradients
from prunelora_keras.methods.builtin_hparams import SSDHParams


def mean_squared_gradients(model, x, y, preprocess, batch_size: int) -> list[np.ndarray]:
    """SSD's importances over (x, y): per trainable variable, the squared gradient of each batch's
    mean cross-entropy averaged over the batches (inference mode), float64."""
    def combine(total, g):
        squares = [np.square(np.asarray(a, np.float64)) for a in g]
        return squares if total is None else [t + q for t, q in zip(total, squares)]

    batches = -(-len(y) // batch_size)
    total = fold_gradients(model, x, y, preprocess, batch_size, combine)
    return [t / batches for t in total]


def dampen(values: np.ndarray, imp_full: np.ndarray, imp_forget: np.ndarray, alpha: float,
           dampening: float) -> np.ndarray:
    """``modify_weight``: where ``imp_forget > alpha x imp_full``, ``values x min(dampening x imp_full
    / imp_forget, 1)``; elsewhere ``values``.

    Example:
        >>> dampen(np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]), np.array([20.0, 5.0, 3.0]), 10.0, 1.0)
        array([0.05, 1.  , 0.  ])
    """
    selected = imp_forget > alpha * imp_full
    factor = np.minimum(dampening * imp_full / np.where(selected, imp_forget, 1.0), 1.0)
    return np.where(selected, values * factor, values).astype(values.dtype)


@dataclass
class NoSteps:
    """A stream with no batches: the loop runs its epochs and trains nothing."""

    steps_per_epoch: int = 0

    def __call__(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        return iter(())


def prepare_ssd(ctx: MethodContext) -> Plan:
    h, model = ctx.hparams, ctx.model
    if len(ctx.forget) == 0:
        raise ValueError("ssd needs forget samples: D_f is empty")
    imp_forget = mean_squared_gradients(model, ctx.forget.x, ctx.forget.y, ctx.preprocess, h.grad_batch)
    full_x = np.concatenate([np.asarray(ctx.retain.x), np.asarray(ctx.forget.x)])
    full_y = np.concatenate([ctx.retain.y, ctx.forget.y])
    imp_full = mean_squared_gradients(model, full_x, full_y, ctx.preprocess, h.grad_batch)
    selected = total = 0
    for var, full, forget in zip(model.trainable_variables, imp_full, imp_forget):
        values = np.asarray(var.value)
        var.assign(dampen(values, full, forget, h.alpha, h.dampening))
        selected += int(np.sum(forget > h.alpha * full))
        total += values.size
    return Plan(model=model, train_vars=[], optimizer=optax.identity(), stream=NoSteps(),
                description=f"dampened {selected} of {total} parameters ({selected / max(total, 1):.2%}) with importance "
                f"on D_f > {h.alpha:g} x on D (lambda {h.dampening:g}); no training")


# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("ssd", "SSD", prepare_ssd,
        "dampen the parameters far more important to D_f than to D; no training (Foster et al. 2024)", "baseline",
        SSDHParams, trains=False),
)
