"""NegGrad+ (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023), one entry.

Every step sees a batch of D_r and a batch of D_f side by side and descends on one combined loss,
``alpha * CE(D_r batch) - (1 - alpha) * CE(D_f batch)``: the retain term keeps the model useful,
the ascent term pushes D_f away. The stream walks D_r once per epoch and cycles through D_f
(``zip(retain_loader, cycle(forget_loader))`` in their code, and in OPTML-Group's "NG+"); the
forget batches keep one size (``neggrad_plus.forget_batch``, default the retain batch size, capped at
|D_f|) so one compiled step serves the epoch.

Hyperparameters (``NegGradPlusHParams``): ``neggrad_plus.alpha`` (0.999: our default; the ascent
term of a single class at full scale otherwise dominates within an epoch), ``neggrad_plus.lr``
(0.01, plain SGD: no momentum, no weight decay, as the authors' ``negative_grad``).
"""

from __future__ import annotations

import jax
import optax

from prunelora_keras.methods.common import RetainWithForget, sgd_chain
from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.builtin_hparams import NegGradPlusHParams


def neggrad_plus_loss(alpha: float):
    """The combined loss ``alpha * CE_r - (1 - alpha) * CE_f`` over a step's two parts."""

    def loss(inputs) -> jax.Array:
        ce = {n: optax.softmax_cross_entropy(inputs.logits[n], inputs.targets[n]).mean() for n in ("retain", "forget")}
        return alpha * ce["retain"] - (1.0 - alpha) * ce["forget"]

    return loss


def prepare_neggrad_plus(ctx: MethodContext) -> Plan:
    u, h = ctx.options, ctx.hparams
    if len(ctx.forget) == 0:
        raise ValueError("neggrad_plus needs forget samples: D_f is empty")
    forget_batch = min(h.forget_batch or u.batch_size, len(ctx.forget))
    stream = RetainWithForget(ctx.retain, ctx.forget, u.batch_size, forget_batch, ctx.drop_last)
    return Plan(model=ctx.model, train_vars=list(ctx.model.trainable_variables), optimizer=sgd_chain(h.lr, h),
                description=f"{h.alpha} x CE(D_r) - {1 - h.alpha:.3g} x CE(D_f), D_f cycled in batches of "
                f"{forget_batch}, lr {h.lr}", stream=stream, loss=neggrad_plus_loss(h.alpha))

# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("neggrad_plus", "NegGrad+", prepare_neggrad_plus,
        "descend on D_r and ascend on D_f in one weighted loss (Kurmanji et al. 2023)", "baseline",
        NegGradPlusHParams),
)
