"""The paper's paradigms (PruneLoRA, Table 1), one registry entry each.

All four train on D_r with the paradigms' optimiser (their hyperparameters ``optimizer``, ``lr``,
``weight_decay``: Adam 1e-3 by default, constant rate; ``l1`` adds a decaying l1 penalty); they
differ in what they prepare:

- ``finetune``: every parameter trains.
- ``pruned``: structured L2 pruning (``pruned.amount`` of the output units of the
  ``prune`` targets, and attention heads where asked), then finetune.
- ``lora``: the base is frozen; LoRA adapters (rank, alpha, dropout) on the ``lora`` targets and
  the ``train_in_full`` layers train.
- ``pruned_lora`` (PruneLoRA): ``pruned``'s pruning, then ``lora``'s adapters.
- ``retrain`` is registered for its name and label only: the exact baseline is a new model
  trained from scratch on D_r, which the experiment (or the user) trains.
"""

from __future__ import annotations

import dataclasses
import json

import optax

from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.models.lora import add_lora
from prunelora_keras.methods.common import decaying_l1
from prunelora_keras.methods.base import RETRAIN, Method, MethodContext, Plan
from prunelora_keras.methods.builtin_hparams import FinetuneHParams, LoRAHParams, PrunedHParams, PrunedLoRAHParams
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.models.pruning import PruneResult, gate_adapters, prune_heads, prune_units


def prune(ctx: MethodContext) -> PruneResult:
    """Zero the lowest-L2 output units of the ``prune`` targets (and attention heads where the
    targets name them) of ``ctx.model``, in place; returns what was zeroed."""
    h, t = ctx.hparams, ctx.targets
    result = prune_units(ctx.model, t.prune, h.amount, mode=h.mode) if t.prune else PruneResult(mode=h.mode)
    if t.prune_heads is not None:
        blocks, heads = t.prune_heads
        prune_heads(ctx.model, blocks, heads, h.amount, h.mode, result)
    return result


def paradigm_optimizer(ctx: MethodContext) -> tuple[optax.GradientTransformation, TrainConfig, str]:
    """The paradigms' optimiser over ``epochs`` epochs of D_r, its Keras recipe and its share key."""
    h = ctx.hparams
    steps_per_epoch = ctx.steps_per_epoch(len(ctx.retain))
    recipe = TrainConfig(epochs=ctx.epochs, optimizer=h.optimizer, lr=h.lr, weight_decay=h.weight_decay,
                         schedule="constant")
    # e.g. "LoRA + l1": the l1-sparse penalty on the paradigm's trained variables, decaying per epoch
    l1 = (h.l1, steps_per_epoch, ctx.epochs) if h.l1 > 0 else None
    optimizer = make_optimizer(recipe, steps_per_epoch * ctx.epochs)
    if l1 is not None:
        optimizer = optax.chain(decaying_l1(*l1), optimizer)
    # A shared compiled step closes over the optimiser: its key holds every input it was built from
    # (the recipe, the step count, the l1 schedule's steps-per-epoch x epochs) and the BatchNorm policy.
    share_key = json.dumps(["unlearn", dataclasses.asdict(recipe), steps_per_epoch, l1, ctx.options.bn])
    return optimizer, recipe, share_key


def _paradigm(ctx: MethodContext, *, pruned: bool, lora: bool, what: str) -> Plan:
    h = ctx.hparams
    result = prune(ctx) if pruned else None
    model, train_vars = ctx.model, list(ctx.model.trainable_variables)
    if lora:
        model, train_vars = add_lora(model, ctx.targets.lora, h.rank, h.alpha, h.dropout,
                                     ctx.targets.train_in_full, seed=ctx.seed)
        if result is not None:
            gate_adapters(model, result)
    optimizer, recipe, share_key = paradigm_optimizer(ctx)
    return Plan(model=model, train_vars=train_vars, optimizer=optimizer,
                description=f"{what} on D_r, {h.optimizer} lr {h.lr}", x=ctx.retain.x,
                y=ctx.retain.y, masks=result.enforced() if result is not None else {}, uses_lora=lora,
                pruned=result, keras_recipe=recipe, share_key=share_key, prefix_cacheable=True)


def prepare_finetune(ctx: MethodContext) -> Plan:
    return _paradigm(ctx, pruned=False, lora=False, what="every parameter")


def prepare_pruned(ctx: MethodContext) -> Plan:
    return _paradigm(ctx, pruned=True, lora=False, what=f"{ctx.hparams.amount:.0%} L2-pruned, every parameter")


def prepare_lora(ctx: MethodContext) -> Plan:
    return _paradigm(ctx, pruned=False, lora=True, what=f"LoRA rank {ctx.hparams.rank}")


def prepare_pruned_lora(ctx: MethodContext) -> Plan:
    return _paradigm(ctx, pruned=True, lora=True,
                     what=f"{ctx.hparams.amount:.0%} L2-pruned, LoRA rank {ctx.hparams.rank}")


# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method(RETRAIN, "Retrain", None, "the exact baseline: a new model trained from scratch on D_r", "paper"),
    Method("finetune", "Finetune", prepare_finetune, "fine-tune every parameter on D_r", "paper",
        FinetuneHParams, keras_fit=True),
    Method("pruned", "Pruned", prepare_pruned, "structured L2 pruning, then fine-tune on D_r", "paper",
        PrunedHParams, keras_fit=True),
    Method("lora", "LoRA", prepare_lora, "LoRA adapters on a frozen base, trained on D_r", "paper",
        LoRAHParams, keras_fit=True),
    Method("pruned_lora", "Pruned LoRA", prepare_pruned_lora,
        "PruneLoRA: structured L2 pruning, then LoRA adapters trained on D_r", "paper",
        PrunedLoRAHParams, keras_fit=True),
)
