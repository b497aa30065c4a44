"""From the experiment's ``Config`` to the library's inputs: the method context, the prepared
paradigm, the evaluation of one model and its reference (the relearning plan)."""

from __future__ import annotations

import sys
from typing import Any

import keras

from prunelora_keras.data.datasets import Dataset, Subset, UnlearningSplit
from prunelora_keras.evaluation.evaluate import (RELEARN_MARGIN, Evaluation, Reference, evaluate_arrays,
                                                 evaluation_sets)
from prunelora_keras.evaluation.metrics import accuracy_pct
from prunelora_keras.evaluation.relearn import relearn_plan
from prunelora_keras.experiment.config import Config
from prunelora_keras.training.inference import predict_logits
from prunelora_keras.experiment.paradigms import config_targets
from prunelora_keras.methods.prepare import Prepared, prefix_cached, prepare_method
from prunelora_keras.methods.base import MethodContext, Plan
from prunelora_keras.methods.hparams import HParams
from prunelora_keras.models.lora import with_fast_layers
from prunelora_keras.models.precision import training_model
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.training.trainers import on_jax


def config_context(cfg: Config, name: str, model: keras.Model, ds: Dataset, split: UnlearningSplit) -> MethodContext:
    """The ``MethodContext`` of method ``name`` in the experiment: the package's model, D_r and D_f of
    ``split``, ``cfg``'s shared options and the method's hyperparameters."""
    return MethodContext(model=model, options=cfg.unlearn, hparams=cfg.methods.get(name, HParams()),
                         retain=split.retain, forget=split.forget, num_classes=ds.num_classes,
                         preprocess=ds.preprocess, seed=cfg.seed, targets=config_targets(cfg), drop_last=cfg.data.drop_last,
                         eval_batch_size=cfg.data.eval_batch_size, epochs=max(cfg.unlearn.epochs),
                         forget_classes=tuple(split.forget_classes))


def prepare_paradigm(name: str, cfg: Config, original_ckpt: str, ds: Dataset, split: UnlearningSplit,
                     distribution: Any = None) -> Prepared:
    """Load the original model and prepare method ``name`` on it, as the experiment runs it.

    The BatchNorm policy (``unlearn.bn``) is applied before the method captures the variables it
    trains: with ``freeze`` BatchNorm's gamma and beta are no longer trainable variables.
    """
    u = cfg.unlearn
    keras.utils.set_random_seed(cfg.seed)
    original = keras.saving.load_model(original_ckpt, compile=False, safe_mode=True)
    original = training_model(with_fast_layers(original), u.precision)
    set_bn_policy(original, u.bn)
    return prepare_method(name, config_context(cfg, name, original, ds, split), distribution=distribution,
                          prefix_cache=u.prefix_cache, prefix_cache_max_gb=u.prefix_cache_max_gb)


def training_inputs(plan: Plan, cfg: Config, ds: Dataset, retain: Subset) -> tuple[keras.Model, Any, bool, dict]:
    """(model to train, inputs, inputs-are-features, facts) for ``plan`` on ``retain`` under ``cfg``
    (the benchmarks' view of the prefix cache)."""
    ctx = MethodContext(model=plan.model, options=cfg.unlearn, hparams=HParams(), retain=retain, forget=retain,
                        num_classes=ds.num_classes, preprocess=ds.preprocess, seed=cfg.seed,
                        targets=config_targets(cfg), drop_last=cfg.data.drop_last,
                        eval_batch_size=cfg.data.eval_batch_size, epochs=1)
    if cfg.unlearn.prefix_cache == "off" or not on_jax():
        return plan.model, retain.x, False, {"prefix_cache": False}
    plan = Plan(model=plan.model, train_vars=plan.train_vars, optimizer=plan.optimizer, x=retain.x, y=retain.y)
    return prefix_cached(plan, ctx, "benchmark", cfg.unlearn.prefix_cache_max_gb)


def make_reference(original: keras.Model, split: UnlearningSplit, ds: Dataset, cfg: Config) -> Reference:
    """The relearning plan and target of a forget request, from the original model.

    Relearning is off (no plan) when ``eval.relearn_max_steps`` is 0, D_f has fewer than 2 images, or the
    request forgets samples rather than classes (``split.forget_classes`` empty: random forgetting). There
    D_f's classes stay in D_r, so a model that generalises, Retrain first, is already near the target on
    held-out D_f (its test-level accuracy against the original's minus 10 points), and only a model that
    damaged D_f needs steps: the count would rank methods backwards (the run says so in one line).
    """
    e = cfg.eval
    if e.relearn_max_steps > 0 and not split.forget_classes:
        print("relearn time: not measured when forgetting samples rather than classes (D_f's classes stay in D_r: "
              "a model that generalises, Retrain first, is at the target already; docs/metrics.md)",
              file=sys.stderr, flush=True)
    if e.relearn_max_steps <= 0 or len(split.forget) < 2 or not split.forget_classes:
        return Reference()
    plan = relearn_plan(split.retain, split.forget, e.relearn_fraction, cfg.seed, e.relearn_forget_share)
    start = accuracy_pct(predict_logits(original, plan.heldout.x, ds.preprocess, cfg.data.eval_batch_size),
                         plan.heldout.y)
    return Reference(relearn=plan, relearn_target=start - RELEARN_MARGIN)


def evaluate_model(model: keras.Model, split: UnlearningSplit, ds: Dataset, cfg: Config,
                   reference: Reference | None = None, label: str = "") -> Evaluation:
    """UA, RA, TA, every attack, the probes, CKA against Retrain and relearn time of ``model``.

    Args:
        model: the model to evaluate (a LoRA model merged first); not modified.
        split, ds: the forget request's data and the data set (normalisation, classes).
        cfg: seeds, evaluation batch size, attack sizes and relearning options.
        reference: Retrain's features (adds ``cka_forget``, ``cka_retain``) and the relearning
            plan (adds ``relearn_steps``, ``relearn_capped``); None: neither.
        label: what the progress lines on stderr call the model ("" : no progress lines).
    Returns:
        ``Evaluation`` with the metrics (percent; CKA in [0, 1]), the Figure-2 losses and the
        features per evaluation set.
    """
    e = cfg.eval
    relearn = {"lr": e.relearn_lr, "batch_size": cfg.unlearn.batch_size, "max_steps": e.relearn_max_steps,
               "eval_every": e.relearn_eval_every}
    return evaluate_arrays(model, evaluation_sets(split), ds.num_classes, ds.preprocess, seed=cfg.seed,
                           batch_size=cfg.data.eval_batch_size, members=e.mia_members, nonmembers=e.mia_nonmembers,
                           reference=reference, relearn=relearn,
                           progress=(lambda line: print(f"{label}: {line}", file=sys.stderr, flush=True)) if label else None)
