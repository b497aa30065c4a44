"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023), one entry.

A student starts as the original model; a frozen teacher *is* the original (inference mode).
Each epoch first runs max-steps over D_f (for the first ``scrub_msteps`` epochs), which *raise*
the student's KL divergence from the teacher there (loss ``-KL``), then min-steps over D_r,
which keep the student close to the teacher and correct there (loss ``alpha * KL + gamma * CE``).
The KL is ``DistillKL`` at temperature ``scrub_temperature`` (``methods.common.distill_kl``).

Defaults are the published ones (github.com/meghdadk/SCRUB): SGD lr 5e-4 (``scrub_lr``), momentum
0.9 and weight decay 5e-4 (the baselines'), gamma 0.99 (``scrub_gamma``), alpha 0.001
(``scrub_alpha``), T 4, msteps 2, forget batches of 32 (``scrub_forget_batch``), retain batches
of ``batch_size``. One optimiser serves both kinds of step, as in their code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prunelora_keras.data import batches, num_batches
from prunelora_keras.methods.common import distill_kl, sgd_chain
from prunelora_keras.methods.registry import Method, MethodContext, Plan, register


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

    @property
    def steps_per_epoch(self) -> int:  # the first epochs' count (with max-steps), for the progress bar
        max_steps = num_batches(len(self.forget), self.forget_batch, self.drop_last) if self.msteps > 0 else 0
        return max_steps + num_batches(len(self.retain), self.batch_size, self.drop_last)

    def __call__(self, epoch: int, rng: np.random.Generator) -> Iterator[dict]:
        if epoch <= self.msteps:
            for part in batches(self.forget.x, self.forget.y, self.forget_batch, rng, self.drop_last, lazy=True):
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
    u, model = ctx.options, ctx.model
    forget_batch = min(u.scrub_forget_batch, max(len(ctx.forget), 1))
    teacher = ([jnp.array(v.value, copy=True) for v in model.trainable_variables],
               [jnp.array(v.value, copy=True) for v in model.non_trainable_variables])
    stream = MaxThenMin(ctx.retain, ctx.forget, u.batch_size, forget_batch, u.scrub_msteps, ctx.drop_last)
    return Plan(model, list(model.trainable_variables), sgd_chain(u.scrub_lr, u),
                f"max-steps on D_f for {u.scrub_msteps} epochs, min-steps on D_r (alpha {u.scrub_alpha}, gamma "
                f"{u.scrub_gamma}, T {u.scrub_temperature}), lr {u.scrub_lr}", stream=stream,
                loss=scrub_loss(u.scrub_alpha, u.scrub_gamma, u.scrub_temperature), teacher=teacher)


register(Method("scrub", "SCRUB", prepare_scrub,
                "a student pulled from the original on D_f and towards it on D_r (Kurmanji et al. 2023)", "baseline",
                ("batch_size", "bn", "baseline_momentum", "baseline_weight_decay", "scrub_lr", "scrub_alpha",
                 "scrub_gamma", "scrub_temperature", "scrub_msteps", "scrub_forget_batch")))
