"""Relearn time (Kurmanji et al. 2023, SCRUB): how fast does the forgotten data come back?

A model that only hides D_f (a zeroed logit row, a retrained classifier on intact features)
relearns it from a handful of examples in a few steps; a model that never learnt it (Retrain)
needs as long as learning it from scratch. We fine-tune a *copy* of each unlearned model with a
fixed optimiser (Adam) on a fixed, seeded batch stream: D_r with a small seeded sample of D_f
mixed in (``fraction`` of D_f), and count the optimiser steps until its accuracy on the rest of
D_f (the held-out part, never trained on) reaches a target, by default the original model's
accuracy there minus 10 points. Runs are capped at ``max_steps``; a capped row says so.

With D_r large and the sample small (100 images among 9,000 at the ``cpu-10k`` preset), a batch
holds about one image of D_f and every model, Retrain included, reaches the cap: ``forget_share``
repeats the sample until it makes up that share of the stream (a few forget images, seen often, as
in the targeted relearning attacks of Hu et al. 2024), so the test can separate models at a cap the
evaluation can afford.

It trains through the package's one compiled step (``train.Trainer``) on JAX: models of one
architecture share one compilation. On Keras's other backends it trains with Keras's fit
(``fit_loop.FitTrainer``: the same Adam, data order and checks). The model passed in is never changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import optax

from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.datasets import Subset
from prunelora_keras.data.batches import num_batches
from prunelora_keras.training.fit_loop import FitTrainer
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.inference import accuracy, predict_logits
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.training.progress import format_seconds

PROGRESS_EVERY_S = 10.0  # how often the relearn test says where it is


@dataclass
class RelearnPlan:
    """The fixed relearning data: a stream (D_r plus a sample of D_f) and the held-out rest of D_f."""

    stream: Subset
    heldout: Subset
    n_forget_in_stream: int


def relearn_plan(retain: Subset, forget: Subset, fraction: float = 0.1, seed: int = 0,
                 forget_share: float = 0.0) -> RelearnPlan:
    """Split D_f into a seeded sample of ``round(fraction * |D_f|)`` (at least 1) that joins D_r in
    the training stream and the held-out rest, on which relearning is measured.

    Args:
        retain, forget: D_r and D_f.
        fraction: the share of D_f that joins the stream (the rest is held out).
        seed: seeds which images of D_f are sampled.
        forget_share: 0 (the default): the sample joins the stream once. In (0, 1): the sample is
            repeated ``round(share * |D_r| / ((1 - share) * k))`` times (at least once), so that it
            makes up about that share of the stream.
    Returns:
        the stream, the held-out rest of D_f and ``k``, the number of distinct D_f images in the stream.

    Example:
        >>> f = Subset(np.zeros((20, 2, 2, 3), np.uint8), np.full(20, 3))
        >>> r = Subset(np.zeros((50, 2, 2, 3), np.uint8), np.zeros(50, int))
        >>> p = relearn_plan(r, f, 0.1)
        >>> len(p.stream), len(p.heldout), p.n_forget_in_stream
        (52, 18, 2)
    """
    if len(forget) < 2:
        raise ValueError("relearning needs at least 2 forget examples (one to learn from, one to measure on)")
    if not 0 <= forget_share < 1:
        raise ValueError(f"forget_share must be in [0, 1) (got {forget_share}): 0 adds the sample once")
    k = min(max(1, round(fraction * len(forget))), len(forget) - 1)
    order = np.random.default_rng([seed, 86028121]).permutation(len(forget))
    pick, rest = np.sort(order[:k]), np.sort(order[k:])
    repeats = max(1, round(forget_share * len(retain) / ((1 - forget_share) * k)))  # share 0: once
    pick_x, pick_y = np.asarray(forget.x[pick]), np.asarray(forget.y[pick])  # a lazy ``Rows`` reads its rows here
    pick_x, pick_y = np.tile(pick_x, (repeats,) + (1,) * (pick_x.ndim - 1)), np.tile(pick_y, repeats)
    stream = Subset(np.concatenate([retain.x, pick_x]), np.concatenate([retain.y, pick_y]))
    return RelearnPlan(stream, Subset(forget.x[rest], forget.y[rest]), k)


def copy_model(model: keras.Model) -> keras.Model:
    """A new model with ``model``'s architecture and a copy of its weights."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def relearn_steps(model: keras.Model, plan: RelearnPlan, target_pct: float, num_classes: int, preprocess: Preprocess, *,
                  lr: float = 1e-3, batch_size: int = 32, max_steps: int = 200, eval_every: int = 5, seed: int = 0,
                  eval_batch_size: int = 512, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Steps of fine-tuning until ``model`` (a copy of it) is ``target_pct`` accurate on the held-out D_f.

    Args:
        model: the unlearned model (not modified).
        plan: the stream and held-out set (:func:`relearn_plan`); the same plan for every model.
        target_pct: accuracy (percent) on ``plan.heldout`` that counts as relearnt.
        num_classes: the data's class count.
        preprocess: how the stored images become the model's input (``Dataset.preprocess``).
        lr, batch_size: Adam's learning rate and the batch size of the stream.
        max_steps: the cap; a model that does not reach the target by then is reported capped.
        eval_every: accuracy is checked every this many steps (and at step 0), so a count is
            exact to this resolution (the first checked step at or above the target).
        seed: seeds the stream's order.
        eval_batch_size: the held-out checks' inference batch.
        progress: called with a line about every ``PROGRESS_EVERY_S`` seconds (step, accuracy, ETA):
            the fine-tune is most of an evaluation's time, and silence for minutes reads as a hang.
    Returns:
        {"relearn_steps": steps (``max_steps`` when capped), "relearn_capped": bool,
        "relearn_final_acc": held-out accuracy at the last check, "relearn_target": target_pct,
        "relearn_peak_acc": the highest held-out accuracy of any check, "relearn_curve": [[step, accuracy],
        ...] at every check from step 0}. The curve says what a capped count cannot: how far and how fast
        a model came back (a fine-tune can pass its best point and fall back before the cap).
    """
    heldout = plan.heldout
    eval_bs = min(eval_batch_size, len(heldout))
    start_acc = 100.0 * accuracy(predict_logits(model, heldout.x, preprocess, eval_bs), heldout.y)
    if start_acc >= target_pct:
        return {"relearn_steps": 0, "relearn_capped": False, "relearn_final_acc": start_acc, "relearn_target": target_pct,
                "relearn_peak_acc": start_acc, "relearn_curve": [[0, round(start_acc, 2)]]}
    clone = copy_model(model)
    set_bn_policy(clone, "update")
    if keras.backend.backend() == "jax":
        trainer = Trainer(clone, optax.adam(lr), num_classes=num_classes, preprocess=preprocess, seed=seed,
                          label="relearn", share_key=f"relearn:adam:{lr}", verbose=False)
        current = trainer.current_values
    else:  # Keras's fit trains the clone's own variables: evaluate the clone as it is
        trainer = FitTrainer(clone, TrainConfig(optimizer="adam", lr=lr), total_steps=max_steps,
                             num_classes=num_classes, preprocess=preprocess,
                             seed=seed, label="relearn", verbose=False)
        current = lambda: None  # noqa: E731
    found: dict[str, Any] = {"steps": None, "acc": start_acc, "curve": [[0, round(start_acc, 2)]]}
    started = shown = time.perf_counter()

    def check(steps: int) -> bool:
        nonlocal shown
        if steps % eval_every and steps < max_steps:
            return False
        found["acc"] = 100.0 * accuracy(predict_logits(clone, heldout.x, preprocess, eval_bs,
                                                       values=current()), heldout.y)
        found["curve"].append([steps, round(found["acc"], 2)])
        now = time.perf_counter()
        if progress is not None and now - shown >= PROGRESS_EVERY_S:
            shown = now
            progress(f"relearn test: step {steps}/{max_steps}, held-out D_f {found['acc']:.1f}% (relearnt at "
                     f"{target_pct:.1f}%), at most {format_seconds((now - started) / steps * (max_steps - steps))} left")
        if found["acc"] >= target_pct:
            found["steps"] = steps
            return True
        return steps >= max_steps

    epochs = math.ceil(max_steps / num_batches(len(plan.stream), batch_size))
    trainer.fit(plan.stream.x, plan.stream.y, epochs, batch_size, on_step_end=check)
    capped = found["steps"] is None
    return {"relearn_steps": max_steps if capped else found["steps"], "relearn_capped": capped,
            "relearn_final_acc": found["acc"], "relearn_target": target_pct,
            "relearn_peak_acc": max(acc for _, acc in found["curve"]), "relearn_curve": found["curve"]}
