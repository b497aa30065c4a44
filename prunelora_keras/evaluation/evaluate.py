"""Evaluating one trained model for unlearning: every metric from one pass over each data set.

One forward pass per evaluation set gives logits and penultimate features together
(``features.predict_logits_and_features``); from them come the output metrics (UA, RA, TA, the
attacks: ``metrics.py``), the representation metrics (the linear probes, and CKA against
Retrain's features: ``representation.py``) and, when a ``Reference`` holds a relearning plan,
the relearn time (``relearn.py``, which trains a copy of the model).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.datasets import Dataset, UnlearningSplit
from prunelora_keras.evaluation.features import predict_logits_and_features
from prunelora_keras.evaluation.metrics import accuracy_pct, cross_entropy, unlearning_metrics
from prunelora_keras.evaluation.relearn import RelearnPlan, relearn_steps
from prunelora_keras.evaluation.representation import linear_cka, probe_forget_acc
from prunelora_keras.evaluation.rmia import rmia_test, rmia_unseen_set
from prunelora_keras.training.inference import predict_logits

RELEARN_MARGIN = 10.0  # relearnt = the original's held-out D_f accuracy minus this many points


@dataclass
class Reference:
    """What every row of one forget request is compared with.

    ``retrain_features``: Retrain's penultimate features per evaluation set (for CKA);
    ``retrain_logits``: Retrain's logits on D_f and the unseen set RMIA compares it with (the forgotten
    classes' test images, class-wise; the test set otherwise: ``rmia.rmia_unseen_set``), (N, classes) for one
    model or (K, N, classes) for K: the reference models of RMIA (``rmia.rmia_test``; they saw neither set);
    ``relearn``: the fixed relearning stream and held-out D_f; ``relearn_target``: the accuracy
    (percent) on the held-out D_f that counts as relearnt (the original's minus 10 points).
    """

    retrain_features: dict[str, np.ndarray] = field(default_factory=dict)
    retrain_logits: dict[str, np.ndarray] = field(default_factory=dict)
    relearn: RelearnPlan | None = None
    relearn_target: float | None = None

    def without_relearn(self) -> "Reference":
        """The same comparison without the relearn test (its fine-tune costs more than the rest of
        an evaluation: the pipeline measures it at each method's largest epoch count only)."""
        return dataclasses.replace(self, relearn=None, relearn_target=None)


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    losses: dict[str, np.ndarray]  # per-sample losses of the test and forget sets (the paper's Figure 2)
    features: dict[str, np.ndarray]
    logits: dict[str, np.ndarray] = field(default_factory=dict)


def evaluation_sets(split: UnlearningSplit) -> dict[str, Any]:
    sets = {"retain": split.retain, "forget": split.forget, "test_retain": split.test_retain}
    if len(split.test_forget):
        sets["test_forget"] = split.test_forget
    return sets


def evaluate_arrays(model: keras.Model, sets: dict[str, Any], num_classes: int, preprocess: Preprocess = Preprocess(), *,
                    seed: int = 0, batch_size: int = 512, members: int = 9000, nonmembers: int = 5000,
                    reference: Reference | None = None, relearn: dict[str, Any] | None = None,
                    progress: Callable[[str], None] | None = None) -> Evaluation:
    """Every metric of ``model`` from data sets given as arrays: the core of ``api.evaluate`` and of
    the experiment's ``experiment.context.evaluate_model``.

    Args:
        model: the model to evaluate (not modified).
        sets: {"retain", "forget", "test_retain" and optionally "test_forget": ``data.Subset``}.
        num_classes: the classifier's width.
        preprocess: how the sets' ``x`` become the model's input (``Dataset.preprocess``; the
            default scales uint8 images to [0, 1] and passes float inputs as they are).
        seed, batch_size: the attacks' and probes' seed; the inference batch.
        members, nonmembers: the loss attack's full-scale draw sizes (``metrics.attack_sizes``).
        reference: Retrain's features (CKA), its logits (RMIA: ``MIA_rmia_auc``, ``MIA_rmia_tpr_1pct``,
            ``MIA_rmia_tpr_01pct``, ``rmia_references``) and the relearning plan (relearn time); None: none.
        relearn: the relearning fine-tune's ``lr``, ``batch_size``, ``max_steps``, ``eval_every``.
        progress: called with a line as each stage starts (forward passes, attacks, probes, the relearn
            test and its steps): on two CPU cores an evaluation takes minutes, and silence reads as a hang.
    Returns:
        ``Evaluation``.
    """
    reference = reference or Reference()
    relearns = reference.relearn is not None and reference.relearn_target is not None
    stages, started = 3 + relearns, time.perf_counter()

    def say(stage: int, what: str) -> None:
        if progress is not None:
            progress(f"evaluating {stage}/{stages}: {what} ({time.perf_counter() - started:.0f}s so far)")

    say(1, f"forward passes over {sum(len(v) for v in sets.values()):,} images ({', '.join(sets)})")
    outputs = {k: predict_logits_and_features(model, v.x, preprocess, batch_size) for k, v in sets.items()}
    logits = {k: v[0] for k, v in outputs.items()}
    feats = {k: v[1] for k, v in outputs.items()}
    labels = {k: v.y for k, v in sets.items()}
    say(2, "membership attacks")
    metrics: dict[str, Any] = unlearning_metrics(logits, labels, seed, members, nonmembers)
    say(3, "linear probes on the penultimate features")
    metrics["probe_forget_acc"] = probe_forget_acc(feats["retain"], labels["retain"], feats["forget"],
                                                   labels["forget"], seed)
    if "test_forget" in feats:
        metrics["probe_forget_acc_test"] = probe_forget_acc(feats["test_retain"], labels["test_retain"],
                                                            feats["test_forget"], labels["test_forget"], seed)
    unseen = rmia_unseen_set(labels)  # D_f's own classes, never seen: the forgotten class's test images if any
    if all(k in reference.retrain_logits for k in ("forget", unseen)) and len(labels[unseen]) >= 2 \
            and len(labels["forget"]):
        refs = {k: reference.retrain_logits[k] for k in ("forget", unseen)}
        refs = {k: v if v.ndim == 3 else v[None] for k, v in refs.items()}
        rmia = rmia_test(logits, refs, labels, nonmember=unseen, seed=seed)
        metrics.update(MIA_rmia_auc=rmia.auc, MIA_rmia_tpr_1pct=rmia.tpr_at_1pct, MIA_rmia_tpr_01pct=rmia.tpr_at_01pct,
                       rmia_references=rmia.references)
    for name, key in (("forget", "cka_forget"), ("test_retain", "cka_retain")):
        if name in reference.retrain_features:
            metrics[key] = linear_cka(feats[name], reference.retrain_features[name])
    if relearns:
        r = {"lr": 1e-3, "batch_size": 128, "max_steps": 200, "eval_every": 5, **(relearn or {})}
        say(4, f"relearn test (fine-tuning a copy, up to {r['max_steps']} steps)")
        metrics.update(relearn_steps(model, reference.relearn, reference.relearn_target, num_classes, preprocess,
                                     lr=r["lr"], batch_size=r["batch_size"], max_steps=r["max_steps"],
                                     eval_every=r["eval_every"], seed=seed, eval_batch_size=batch_size,
                                     progress=progress))
    losses = {"test": cross_entropy(logits["test_retain"], labels["test_retain"]),
              "forget": cross_entropy(logits["forget"], labels["forget"])}
    return Evaluation(metrics, losses, feats, logits)


def evaluate_sets(model: keras.Model, split: UnlearningSplit, ds: Dataset, batch_size: int) -> dict[str, float]:
    """Accuracy in percent on each evaluation set of the split."""
    sets = {"train": split.train, "test": split.test, "retain": split.retain, "forget": split.forget,
            "test_retain": split.test_retain, "test_forget": split.test_forget}
    return {name: accuracy_pct(predict_logits(model, subset.x, ds.preprocess, batch_size), subset.y)
            for name, subset in sets.items() if len(subset)}
