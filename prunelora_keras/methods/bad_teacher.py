"""Bad Teacher (Chundawat, Tarun, Mandal, Kankanhalli, "Can Bad Teaching Induce Forgetting?
Unlearning in Deep Networks using an Incompetent Teacher", AAAI 2023), one entry.

A student, starting as the original model, distils from two frozen teachers at once: on D_r from
the competent teacher (the original), on D_f from an incompetent one (a randomly initialised,
untrained network of the same architecture). The loss is their ``UnlearnerLoss``: PyTorch's
``F.kl_div(log_softmax(s / T), teacher_softmax(t / T))`` with its default reduction, the mean of
``p_t x (log p_t - log p_s)`` over every (sample, class) entry of the batch (not ``batchmean``,
no T^2), each sample's ``p_t`` from its own teacher.

Their code (github.com/vikram2000b/bad-teaching-unlearning, ``unlearn.py``; the same in
if-loops/selective-synaptic-dampening's ``blindspot``) trains one shuffled stream of D_f plus a
random 30% of D_r (``bad_teacher.retain_fraction``, drawn once from the run's seed), Adam at 1e-4
(``bad_teacher.lr``), T 1 (``bad_teacher.temperature``), batches of 256 for one epoch. Here the
batch size and epochs are the run's (``unlearn.batch_size``, ``unlearn.epochs``) as for every
method, and each batch holds D_r and D_f samples in the stream's proportion (a fixed count of
each, D_f cycled, D_r's subset walked once per epoch), so that one compiled step serves the
epoch; the two parts go through the student in one forward pass (``Plan.joint``), so BatchNorm
normalises them together as one mixed batch, as theirs does. The student trains in training
mode, the teachers run in inference mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prunelora_keras.data.datasets import Subset
from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.common import RetainWithForget, mixed_batch_sizes, random_init_copy
from prunelora_keras.methods.builtin_hparams import BadTeacherHParams


def unlearner_loss(temperature: float):
    """Their ``UnlearnerLoss`` over a step's ``retain`` and ``forget`` parts: each part's student
    distribution against its own teacher's (the part's entry of ``LossInputs.teacher``), the KL
    terms averaged over every (sample, class) entry of both parts together."""

    def loss(inputs) -> jax.Array:
        total, entries = 0.0, 0
        for part in ("retain", "forget"):
            log_p_s = jax.nn.log_softmax(inputs.logits[part] / temperature, axis=-1)
            p_t = jax.nn.softmax(inputs.teacher[part] / temperature, axis=-1)
            total = total + jnp.sum(jax.scipy.special.xlogy(p_t, p_t) - p_t * log_p_s)
            entries += log_p_s.shape[0] * log_p_s.shape[1]
        return total / entries

    return loss


def prepare_bad_teacher(ctx: MethodContext) -> Plan:
    h, u, model = ctx.hparams, ctx.options, ctx.model
    if len(ctx.forget) == 0 or len(ctx.retain) == 0:
        raise ValueError("bad_teacher needs forget and retain samples: D_f or D_r is empty")
    if u.batch_size < 2:
        raise ValueError("bad_teacher mixes D_r and D_f samples in every batch: set unlearn.batch_size >= 2")
    keep = max(1, int(h.retain_fraction * len(ctx.retain)))
    rows = np.sort(np.random.default_rng([ctx.seed, 3301]).choice(len(ctx.retain), keep, replace=False))
    retain = Subset(ctx.retain.x[rows], ctx.retain.y[rows])
    b_r, b_f = mixed_batch_sizes(u.batch_size, len(retain), len(ctx.forget))
    incompetent = random_init_copy(model, ctx.seed + 7717)
    copy = lambda vs: [jnp.array(v.value, copy=True) for v in vs]  # noqa: E731
    teacher = {"retain": (copy(model.trainable_variables), copy(model.non_trainable_variables)),
               "forget": (copy(incompetent.trainable_variables), copy(incompetent.non_trainable_variables))}
    del incompetent
    stream = RetainWithForget(retain, ctx.forget, b_r, b_f, ctx.drop_last)
    return Plan(model=model, train_vars=list(model.trainable_variables), optimizer=optax.adam(h.lr),
                description=f"distil the original on {keep} D_r samples and a random network on D_f, {b_r} + {b_f} per "
                f"batch, T {h.temperature:g}, adam lr {h.lr}", stream=stream, loss=unlearner_loss(h.temperature),
                teacher=teacher, joint=True)


# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("bad_teacher", "Bad Teacher", prepare_bad_teacher,
        "distil the original on D_r and a random network on D_f (Chundawat et al. 2023)", "baseline",
        BadTeacherHParams),
)
