"""AMUN (Ebrahimpour-Boroojeny, Sundaram, Chandrasekaran, "AMUN: Adversarial Machine UNlearning",
ICML 2025; github.com/Ali-E/AMUN), one entry.

For each forget image an adversarial example is searched on the original model (L2 PGD whose radius
doubles until the prediction changes, ``adversarial.pgd_first_flip``) and labelled with that wrong
prediction; the model is then fine-tuned on D_f *with its true labels* together with those
adversarial examples, and with D_r where the setting has it (``amun.remain = "use"``, their default
``--remain use``): 55,000 samples an epoch for a random 10% of CIFAR-10. Learning D_f's adversarial
neighbours with their wrong labels lowers the model's confidence on D_f itself without driving it to
the errors of gradient ascent, which is why AMUN's D_f accuracy lands near Retrain's (their Table 1).

Their run (``adversarial_unlearn.py`` through ``hyperparam_tune.py``): SGD lr 0.01, momentum 0.9,
weight decay 5e-4, StepLR(1, 0.1) (the rate divided by 10 after every epoch: ``amun.lr_decay_rate``),
batch 128, 10 epochs; PGD-50 from radius 0.04 with steps of radius / 10 (``pgdl2_modified.py``'s
defaults, the ones ``build_advdataset.py`` runs). Differences here:

- Their loader shuffles D_r, D_f and the adversarial set together, so a batch holds a random number
  of each; here every batch holds them in the data's proportion (a fixed count of adversarial
  examples, their set cycled), so that one compiled step serves the epoch, and the two parts go
  through the model in one forward pass (one mixed batch for BatchNorm, as theirs).
- Their D_r and D_f are augmented (crop, flip) and the adversarial images are not; unlearning here
  never augments.
- Their search never gives up; here ``amun.max_rounds`` radii are tried (an image still classified
  correctly then keeps its last point with its own label; the log line says how many).

The search is the method's cost: at most ``amun.steps`` forward-backward passes per image and radius (a
batch stops once all its images flipped), batched at a few compiled shapes, reported as the run's
preparation time beside the epochs' (RTE).
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
import optax

from prunelora_keras.data.datasets import Subset
from prunelora_keras.data.fingerprint import update_digest
from prunelora_keras.methods.adversarial import Flips, pgd_first_flip
from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.builtin_hparams import AMUNHParams
from prunelora_keras.methods.common import RetainWithForget, mixed_batch_sizes, sgd_chain, step_decay_schedule


def mixed_cross_entropy(inputs) -> jax.Array:
    """The cross-entropy averaged over every sample of a step's parts together (one mixed batch)."""
    total = sum(optax.softmax_cross_entropy(inputs.logits[n], inputs.targets[n]).sum() for n in inputs.logits)
    return total / sum(inputs.logits[n].shape[0] for n in inputs.logits)


_LAST_SEARCH: list = []  # [(key, Flips)]: the last search, for the next member of a pool from the same original


def searched(ctx: MethodContext, h: AMUNHParams) -> Flips:
    """``pgd_first_flip`` on ``ctx``'s model and D_f, or the last search's result when the model's values, D_f
    and the attack's settings are the same (a pool's members start from one original: the search has no
    randomness, so one serves them all)."""
    # a dropout layer's seed state differs by member and does not act in inference
    values = [v.value for v in ctx.model.variables if "seed_generator" not in v.path]
    digest = update_digest(hashlib.sha1(), *values, ctx.forget.x, ctx.forget.y)
    key = (digest.hexdigest(), ctx.preprocess, h.eps, h.steps, h.max_rounds)
    if _LAST_SEARCH and _LAST_SEARCH[0][0] == key:
        return _LAST_SEARCH[0][1]
    flips = pgd_first_flip(ctx.model, ctx.forget.x, ctx.forget.y, ctx.preprocess, h.eps, h.steps, h.max_rounds,
                           ctx.eval_batch_size, progress=ctx.progress)
    _LAST_SEARCH[:] = [(key, flips)]
    return flips


def prepare_amun(ctx: MethodContext) -> Plan:
    h, u = ctx.hparams, ctx.options
    if len(ctx.forget) == 0:
        raise ValueError("amun trains on adversarial examples of the forget samples: D_f is empty")
    if u.batch_size < 2:
        raise ValueError("amun mixes clean and adversarial samples in every batch: set unlearn.batch_size >= 2")
    flips = searched(ctx, h)
    forget_y = np.asarray(ctx.forget.y)
    adversarial = Subset(flips.x, flips.labels.astype(forget_y.dtype))
    if h.remain == "use":
        clean = Subset(np.concatenate([np.asarray(ctx.retain.x), np.asarray(ctx.forget.x)]),
                       np.concatenate([np.asarray(ctx.retain.y), forget_y]))
    else:
        clean = ctx.forget
    b_clean, b_adv = mixed_batch_sizes(u.batch_size, len(clean), len(adversarial))
    stream = RetainWithForget(clean, adversarial, b_clean, b_adv, ctx.drop_last)
    steps = stream.steps_per_epoch
    lr = step_decay_schedule(h.lr, list(range(1, ctx.epochs)), h.lr_decay_rate, lambda epoch: steps)
    unflipped = int(np.sum(~flips.flipped))
    radius = float(np.median(flips.radius[flips.flipped])) if flips.flipped.any() else float("nan")
    return Plan(model=ctx.model, train_vars=list(ctx.model.trainable_variables), optimizer=sgd_chain(lr, h),
                description=f"{'D_r + ' if h.remain == 'use' else ''}D_f + {len(adversarial)} adversarial examples "
                f"(L2 PGD-{h.steps} from radius {h.eps:g}, median radius {radius:.3g}, {flips.steps} image-steps; "
                f"{unflipped} unflipped after {h.max_rounds} radii), {b_clean} + {b_adv} per batch, lr {h.lr} "
                f"x{h.lr_decay_rate:g} each epoch", stream=stream, loss=mixed_cross_entropy, joint=True)


# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("amun", "AMUN", prepare_amun,
        "fine-tune on D_f with its nearest adversarial examples, labelled as the original mispredicts them "
        "(Ebrahimpour-Boroojeny et al. 2025)", "baseline", AMUNHParams),
)
