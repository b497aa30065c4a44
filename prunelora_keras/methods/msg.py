"""Masked Small Gradients, MSG (the NeurIPS 2023 Machine Unlearning Challenge's second-placed
entry), as Deep Unlearn implements it (Cadet et al. 2024, github.com/xcadet/deepunlearn,
``munl/unlearning/kgltop2.py``), one entry.

Why this entry: Deep Unlearn benchmarked the challenge's top seven entries beside the classic
baselines, each with its own hyperparameter search, and concludes that MSG and Convolution
Transpose (CT) "consistently perform better ... across different models, datasets, and
initializations", assessed by population MIAs and U-LiRA. MSG is the one of the two that decides
from the data what to forget (CT transposes every convolution kernel whatever the forget set).

1. Gradient pass (training mode, as their code never calls ``eval()`` first: BatchNorm uses and
   updates its batch statistics): the gradient of each batch's mean cross-entropy, *summed* over
   the batches of a random subset of D_r as large as D_f (batches of ``msg.grad_batch``, 64),
   minus the same sum over D_f (batches of ``unlearn.batch_size``).
2. In every convolution kernel (``msg.layers = "all"``: Dense kernels too), the
   ``round(msg.init_rate x n)`` entries (0.3) with the smallest |gradient| are drawn anew from
   Kaiming's normal (fan-out, ReLU gain: std sqrt(2 / fan_out)), layer by layer.
3. Fine-tune every parameter on D_r with SGD (momentum 0.9, coupled weight decay 5e-4), the
   loss gradient of the kept kernel entries scaled by ``msg.kept_scale`` (0.1; their ``MaskConv2d``),
   weight decay and momentum unscaled, and the learning rate annealed linearly per epoch up to the
   middle epoch and down after it (their ``LinearAnnealingLR``: with A = (E + 1) // 2, epoch e runs
   at ``lr x e / A`` up to A, then ``lr x (E + 1 - e) / (E + 1 - A)``), peak ``msg.lr`` 1e-3.

Their run is 5 epochs at batch 64; here the run's epochs and batch size serve, as for every method.
"""

from __future__ import annotations

import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.common import fold_gradients, masked_updates
from prunelora_keras.methods.builtin_hparams import MSGHParams


def linear_annealing(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """Their ``LinearAnnealingLR`` stepped once per epoch, as a schedule over the step count.

    Example:
        >>> sched = linear_annealing(1.0, 5, 2)
        >>> [round(float(sched(i)), 4) for i in range(0, 10, 2)]
        [0.3333, 0.6667, 1.0, 0.6667, 0.3333]
    """
    peak = (epochs + 1) // 2

    def schedule(count):
        e = (jnp.asarray(count) // max(steps_per_epoch, 1) + 1).astype(jnp.float32)
        factor = jnp.where(e <= peak, e / peak, (epochs + 1 - e) / (epochs + 1 - peak))
        return lr * jnp.maximum(factor, 0.0)

    return schedule


def smallest_entries(grad: np.ndarray, rate: float) -> np.ndarray:
    """A 0/1 mask of the ``round(rate x n)`` entries with the smallest |grad| (ties: the earlier entry).

    Example:
        >>> smallest_entries(np.array([[0.5, -0.1], [0.0, 2.0]]), 0.5)
        array([[0., 1.],
               [1., 0.]], dtype=float32)
    """
    k = round(rate * grad.size)
    chosen = np.zeros(grad.size, np.float32)
    chosen[np.argsort(np.abs(grad).ravel(), kind="stable")[:k]] = 1.0
    return chosen.reshape(grad.shape)


def eligible_kernels(model: keras.Model, layers: str) -> list[keras.Variable]:
    """The kernels MSG re-initialises: every Conv2D's (and with ``layers="all"`` every Dense's)."""
    kinds = (keras.layers.Conv2D,) if layers == "conv" else (keras.layers.Conv2D, keras.layers.Dense)
    return [layer.kernel for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, kinds) and getattr(layer, "kernel", None) is not None and layer.kernel.trainable]


def prepare_msg(ctx: MethodContext) -> Plan:
    h, u, model = ctx.hparams, ctx.options, ctx.model
    if len(ctx.forget) == 0 or len(ctx.retain) == 0:
        raise ValueError("msg needs forget and retain samples: D_f or D_r is empty")
    rng = np.random.default_rng([ctx.seed, 4421])
    rows = rng.permutation(len(ctx.retain))[:len(ctx.forget)]
    order = rng.permutation(len(ctx.forget))

    def add(total, g):
        return [np.asarray(a, np.float64) for a in g] if total is None else [t + np.asarray(a) for t, a in zip(total, g)]

    retain_sum = fold_gradients(model, ctx.retain.x[rows], ctx.retain.y[rows], ctx.preprocess, h.grad_batch, add,
                                training=True)
    forget_sum = fold_gradients(model, ctx.forget.x[order], ctx.forget.y[order], ctx.preprocess, u.batch_size, add,
                                training=True)
    grads = {id(v): r - f for v, r, f in zip(model.trainable_variables, retain_sum, forget_sum)}
    kernels = eligible_kernels(model, h.layers)
    if not kernels:
        raise ValueError(f"msg re-initialises {'Conv2D' if h.layers == 'conv' else 'Conv2D and Dense'} kernels and this "
                         "model has none that train; set msg.layers=all or choose another method")
    scale, reinit = {}, 0
    for i, kernel in enumerate(kernels):
        chosen = smallest_entries(grads[id(kernel)], h.init_rate)
        shape = tuple(kernel.shape)
        fan_out = int(np.prod(shape[:-2])) * shape[-1]  # (kh, kw, in, out) or (in, out), as torch's fan-out
        fresh = np.random.default_rng([ctx.seed, 4421, i]).standard_normal(shape) * np.sqrt(2.0 / fan_out)
        values = np.asarray(kernel.value)
        kernel.assign(np.where(chosen > 0, fresh, values).astype(values.dtype))
        scale[id(kernel)] = chosen + h.kept_scale * (1.0 - chosen)
        reinit += int(chosen.sum())
    train_vars = list(model.trainable_variables)
    steps = ctx.steps_per_epoch(len(ctx.retain))
    optimizer = optax.chain(masked_updates([scale.get(id(v)) for v in train_vars]),
                            optax.add_decayed_weights(h.weight_decay) if h.weight_decay else optax.identity(),
                            optax.sgd(linear_annealing(h.lr, ctx.epochs, steps), momentum=h.momentum or None))
    return Plan(model=model, train_vars=train_vars, optimizer=optimizer, x=ctx.retain.x, y=ctx.retain.y,
                description=f"re-initialised {reinit} kernel entries of {len(kernels)} layers (the {h.init_rate:.0%} with the "
                f"smallest |grad(D_r) - grad(D_f)|), fine-tuned on D_r (kept entries' gradients x{h.kept_scale:g}), "
                f"lr {h.lr} annealed linearly")


# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("msg", "MSG", prepare_msg,
        "re-initialise the kernel entries with the smallest gradients, then fine-tune on D_r "
        "(NeurIPS 2023 challenge, as in Deep Unlearn)", "baseline", MSGHParams),
)
