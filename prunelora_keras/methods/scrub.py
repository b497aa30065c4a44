"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023), one entry.

A student starts as the original model; a frozen teacher *is* the original (inference mode).
Each epoch first runs max-steps over D_f (for the first ``scrub.msteps`` epochs), which *raise*
the student's KL divergence from the teacher there (loss ``-KL``), then min-steps over D_r,
which keep the student close to the teacher and correct there (loss ``alpha * KL + gamma * CE``).
The KL is ``DistillKL`` at temperature ``scrub.temperature`` (``methods.common.distill_kl``).

Defaults are the published ones, those of ``large_scale_unlearning.ipynb`` in
github.com/meghdadk/SCRUB (CIFAR-10 / Lacuna-10, ResNet-18 and All-CNN): SGD lr 5e-4 (``scrub.lr``),
momentum 0.9 and weight decay 5e-4 (the baselines'), gamma 0.99 (``scrub.gamma``), alpha 0.001
(``scrub.alpha``), T 4, msteps 2, forget batches of 512 as its ``forget_loader`` (``scrub.forget_batch``;
the last partial one kept, as their loader, whatever ``drop_last``), retain batches of ``batch_size``.
One optimiser serves both kinds of step, as in their code, and its learning rate
follows their ``adjust_learning_rate``: in epoch e (from 1) it is ``lr * lr_decay_rate
** #{d in lr_decay_epochs: e > d}`` (defaults [3, 5, 9] and 0.1: 5e-4 in epochs 1-3, 5e-5 in
4-5, 5e-6 in 6-9, 5e-7 from 10). ``common.step_decay_schedule`` makes that an optax schedule over the
optimiser's step count; the epochs with max-steps are longer than those without, so each switch
sits at the cumulative step count of the epochs before it (``MaxThenMin.epoch_steps``).

Epochs. That notebook runs 3 epochs (``sgda_epochs = 3``), so its decay never fires; the
small-scale notebook (gamma 1, alpha 0.5, T 2, msteps 3) runs 10 with decays at [5, 8, 9]. SCRUB
runs here at the run's ``unlearn.epochs`` like every other method, not at a default of its own:
the table compares methods at equal epoch budgets, and the decay is counted in absolute epochs,
so the 5-epoch column of a 10-epoch run is exactly a 5-epoch run. With the default decay the first
3 epochs (all the max-steps among them) are the published run, and epochs 4-5 add min-steps at a
tenth of the rate and 6-10 at a hundredth or less. For the published length alone, ask for
``unlearn.epochs = [3]`` (or add 3 to the columns: ``--epochs 3,5,10`` costs no extra training).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prunelora_keras.data.batches import batches, num_batches
from prunelora_keras.methods.common import distill_kl, sgd_chain, step_decay_schedule
from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.builtin_hparams import ScrubHParams
from prunelora_keras.training.progress import count


@dataclass
class MaxThenMin:
    """One SCRUB epoch: batches ``{"forget": ...}`` over D_f (epochs 1..``msteps`` only), then
    ``{"retain": ...}`` over D_r; both orders from the epoch's generator."""

    retain: Any
    forget: Any
    batch_size: int
    forget_batch: int
    msteps: int
    drop_last: bool = False

    def epoch_steps(self, epoch: int) -> int:
        """The steps of epoch ``epoch`` (from 1): D_f's batches while ``epoch <= msteps``, then D_r's."""
        max_steps = num_batches(len(self.forget), self.forget_batch) if epoch <= self.msteps else 0  # D_f whole
        return max_steps + num_batches(len(self.retain), self.batch_size, self.drop_last)

    @property
    def steps_per_epoch(self) -> int:  # the first epoch's count (with max-steps, if any), for the progress bar
        return self.epoch_steps(1)

    def __call__(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        if epoch <= self.msteps:
            for part in batches(self.forget.x, self.forget.y, self.forget_batch, rng, lazy=True):  # D_f whole
                yield {"forget": part}
        for part in batches(self.retain.x, self.retain.y, self.batch_size, rng, self.drop_last, lazy=True):
            yield {"retain": part}


def scrub_loss(alpha: float, gamma: float, temperature: float):
    """Max-step (a ``forget`` part): ``-KL``; min-step (a ``retain`` part): ``alpha * KL + gamma * CE``."""

    def loss(inputs) -> jax.Array:
        if "forget" in inputs.logits:
            return -distill_kl(inputs.logits["forget"], inputs.teacher["forget"], temperature)
        logits = inputs.logits["retain"]
        kl = distill_kl(logits, inputs.teacher["retain"], temperature)
        return alpha * kl + gamma * optax.softmax_cross_entropy(logits, inputs.targets["retain"]).mean()

    return loss


def prepare_scrub(ctx: MethodContext) -> Plan:
    u, h, model = ctx.options, ctx.hparams, ctx.model
    forget_batch = min(h.forget_batch, max(len(ctx.forget), 1))
    teacher = ([jnp.array(v.value, copy=True) for v in model.trainable_variables],
               [jnp.array(v.value, copy=True) for v in model.non_trainable_variables])
    stream = MaxThenMin(ctx.retain, ctx.forget, u.batch_size, forget_batch, h.msteps, ctx.drop_last)
    lr = step_decay_schedule(h.lr, h.lr_decay_epochs, h.lr_decay_rate, stream.epoch_steps)
    decay = (f" x{h.lr_decay_rate:g} after epochs {', '.join(map(str, h.lr_decay_epochs))}"
             if h.lr_decay_epochs else "")
    return Plan(model=model, train_vars=list(model.trainable_variables), optimizer=sgd_chain(lr, h),
                description=f"max-steps on D_f for {count(h.msteps, 'epoch')}, min-steps on D_r (alpha {h.alpha}, gamma "
                f"{h.gamma}, T {h.temperature}), lr {h.lr}{decay}", stream=stream,
                loss=scrub_loss(h.alpha, h.gamma, h.temperature), teacher=teacher)

# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("scrub", "SCRUB", prepare_scrub,
        "a student pulled from the original on D_f and towards it on D_r (Kurmanji et al. 2023)", "baseline",
        ScrubHParams),
)
