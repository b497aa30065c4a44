"""The unlearning baselines of Jia, Liu et al. (NeurIPS 2023) and SalUn (Fan et al., ICLR 2024).

Recipes follow their code base (github.com/OPTML-Group/Unlearn-Sparse): SGD with momentum 0.9
and coupled weight decay 5e-4 (each method's ``momentum`` and ``weight_decay``) and each method's
published learning rate (``lr``). Every parameter trains.

- ``ga``, gradient ascent (Thudi et al. 2022; Graves et al. 2021): ascend the cross-entropy on
  D_f only (``ga.lr`` 1e-4). Nothing anchors D_r, so it forgets fast and damages the rest as fast.
- ``rl``, random labels (Golatkar et al. 2020; Hayase et al. 2020): train on D_r plus D_f with
  each forget image relabelled at random (``rl.lr`` 0.013). ``rl.labels = "per_batch"`` (the
  default, as OPTML-Group's code): a fresh label from *all* classes every epoch; ``"once_other"``:
  one label per image for the whole run, never the true class. ``rl.order = "forget_first"`` (the
  default, their CIFAR-10 code): each epoch every D_f batch, then every D_r batch; ``"mixed"`` (their
  CIFAR-100 code): one shuffled stream.
- ``l1_sparse`` (Jia et al. 2023): fine-tune on D_r with an l1 penalty alpha * (1 - e / E) *
  ||theta||_1 decaying linearly to zero over the E epochs (``l1_sparse.alpha`` 1e-4, ``l1_sparse.lr`` 0.01).
- ``salun`` (Fan et al. 2024): the gradient of the forget loss over D_f picks the ``salun.ratio``
  (0.5) of weights with the largest magnitude (one global threshold); then ``rl`` with every other
  weight frozen (its updates, weight decay included, are masked).
"""

from __future__ import annotations

import numpy as np

from prunelora_keras.methods.common import (ForgetThenRetain, decaying_l1, random_labels_per_epoch,
                                            random_other_labels, saliency_masks, sgd_chain)
from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.builtin_hparams import GAHParams, L1SparseHParams, RLHParams, SalUnHParams
from prunelora_keras.training.progress import count



def prepare_ga(ctx: MethodContext) -> Plan:
    h = ctx.hparams
    return Plan(model=ctx.model, train_vars=list(ctx.model.trainable_variables), optimizer=sgd_chain(h.lr, h, ascend=True),
                description=f"gradient ascent on D_f ({len(ctx.forget)} images), lr {h.lr}", x=ctx.forget.x,
                y=ctx.forget.y)


def random_label_data(ctx: MethodContext) -> tuple[np.ndarray, np.ndarray, object, str]:
    """D_r + D_f with D_f's labels random (``labels``): (x, y, labels_for_epoch or None, how)."""
    h, retain, forget = ctx.hparams, ctx.retain, ctx.forget
    x = np.concatenate([retain.x, forget.x])
    if h.labels == "per_batch":
        y = np.concatenate([retain.y, forget.y])
        is_forget = np.r_[np.zeros(len(retain), bool), np.ones(len(forget), bool)]
        return x, y, random_labels_per_epoch(y, is_forget, ctx.num_classes, ctx.seed), \
            "random labels from all classes, new every epoch"
    y = np.concatenate([retain.y, random_other_labels(forget.y, ctx.num_classes, ctx.seed)])
    return x, y, None, "one random other label per image"


def random_label_stream(ctx: MethodContext) -> tuple[dict, str]:
    """The Plan's data for RL and SalUn: D_r + D_f with random D_f labels (``labels``), in ``order``: D_f's
    batches first as their CIFAR-10 code (a ``ForgetThenRetain`` stream), or one shuffled stream.

    Args:
        ctx: the method's context (its hyperparameters carry ``labels`` and ``order``).
    Returns:
        (the ``Plan`` keyword arguments: ``stream`` and ``y``, or ``x``, ``y`` and ``labels_for_epoch``; a
        description of the data for the log line).

    Example:
        >>> data, how = random_label_stream(ctx)  # doctest: +SKIP
        >>> plan = Plan(model=ctx.model, train_vars=..., optimizer=..., **data)  # doctest: +SKIP
    """
    x, y, per_epoch, how = random_label_data(ctx)
    if ctx.hparams.order == "mixed":
        return {"x": x, "y": y, "labels_for_epoch": per_epoch}, f"D_r + D_f shuffled together, D_f with {how}"
    stream = ForgetThenRetain(x, y, len(ctx.retain), ctx.options.batch_size, ctx.drop_last, per_epoch)
    return {"stream": stream, "y": y}, f"every D_f batch ({how}), then every D_r batch"


def prepare_rl(ctx: MethodContext) -> Plan:
    h = ctx.hparams
    data, how = random_label_stream(ctx)
    return Plan(model=ctx.model, train_vars=list(ctx.model.trainable_variables), optimizer=sgd_chain(h.lr, h),
                description=f"{how}, lr {h.lr}", **data)


def prepare_l1_sparse(ctx: MethodContext) -> Plan:
    h = ctx.hparams
    steps = ctx.steps_per_epoch(len(ctx.retain))  # the loop's steps per epoch (drop_last included)
    return Plan(model=ctx.model, train_vars=list(ctx.model.trainable_variables),
                optimizer=sgd_chain(h.lr, h, l1=decaying_l1(h.alpha, steps, ctx.epochs)),
                description=f"fine-tuning on D_r with l1 {h.alpha} decaying to 0 over {count(ctx.epochs, 'epoch')}, lr {h.lr}",
                x=ctx.retain.x, y=ctx.retain.y)


def prepare_salun(ctx: MethodContext) -> Plan:
    h = ctx.hparams
    train_vars = list(ctx.model.trainable_variables)
    masks = saliency_masks(ctx.model, train_vars, ctx.forget.x, ctx.forget.y, ctx.preprocess, h.ratio,
                           ctx.eval_batch_size)
    data, how = random_label_stream(ctx)
    return Plan(model=ctx.model, train_vars=train_vars, optimizer=sgd_chain(h.lr, h, masks=masks),
                description=f"{how}, on the {h.ratio:.0%} most salient weights, lr {h.lr}", **data)

# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("ga", "GA", prepare_ga, "gradient ascent on D_f (Thudi et al. 2022)", "baseline",
        GAHParams),
    Method("rl", "RL", prepare_rl, "random labels on D_f, with D_r (Golatkar et al. 2020)", "baseline",
        RLHParams),
    Method("l1_sparse", "l1-sparse", prepare_l1_sparse, "l1-sparse fine-tuning on D_r (Jia et al. 2023)",
        "baseline", L1SparseHParams),
    Method("salun", "SalUn", prepare_salun, "random labels on the most salient weights (Fan et al. 2024)",
        "baseline", SalUnHParams),
)
