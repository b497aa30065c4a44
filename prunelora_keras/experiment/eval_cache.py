"""A saved model's numbers read back instead of recomputed: its accuracies and its whole evaluation.

Every run evaluates the original and Retrain before any method. A resumed run, and the stages that share
one Retrain (the testbed's ``methods-class3`` beside ``class3``), would otherwise spend minutes computing
the same numbers again: Retrain's relearn test alone is up to 200 fine-tuning steps. The cache files sit
beside the checkpoint (so a stage that hard-links the checkpoint gets them too), named by a fingerprint
of everything the numbers depend on: the checkpoint's bytes, every image and label of the split, the
preprocessing and the evaluation's settings; an evaluation's also hashes the reference it was measured
against and the package's code. A cached number is therefore never one of another model, other data,
other settings or other code; what changes any of them computes anew.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunelora_keras.data.datasets import Dataset, UnlearningSplit
from prunelora_keras.data.fingerprint import update_digest
from prunelora_keras.evaluation.evaluate import Evaluation, Reference
from prunelora_keras.experiment.config import Config
from prunelora_keras.experiment.context import evaluate_model
from prunelora_keras.parallel.multihost import agree
from prunelora_keras.training.checkpoint import write_npz

# What a cached evaluation keeps of the features: the ones a Reference holds (CKA against Retrain) and the
# test images'. D_r's (one row an image of the training set: 45 MB on CIFAR-10) only trained the probe.
KEPT_FEATURES = ("forget", "test_retain", "test_forget")


def model_data_digest(ckpt: str | Path, split: UnlearningSplit, ds: Dataset, eval_batch_size: int,
                      *settings: Any) -> Any:
    """A ``hashlib`` object fed with what every number of a saved model on this data depends on. Callers may
    add more before taking the hex digest.

    Args:
        ckpt: the checkpoint file; its bytes are hashed.
        split: the forget request; every image and label of each of its sets is hashed.
        ds: the data set (its normalisation is hashed).
        eval_batch_size: the evaluation batch size.
        *settings: further JSON values, hashed in the same list (``stage_accuracies`` passes ``eval.tta``).
    Returns:
        the ``hashlib.sha1`` object.

    Example:
        >>> model_data_digest("runs/x/checkpoints/original-0123.keras", split, ds, 512, 2).hexdigest()[:16]  # doctest: +SKIP
        '4aa492cc75f5c8aa'
    """
    digest = hashlib.sha1()
    digest.update(Path(ckpt).read_bytes())
    for subset in (split.train, split.test, split.retain, split.forget, split.test_retain, split.test_forget):
        update_digest(digest, subset.y)
        digest.update(str(len(subset)).encode())
        update_digest(digest, subset.x)  # in slices: a lazy view (``Rows``) is never loaded whole
    digest.update(json.dumps([ds.preprocess.mean, ds.preprocess.std, eval_batch_size, *settings]).encode())
    return digest


def _code_digest() -> str:
    """The package's Python sources, hashed: evaluation code that changed computes anew."""
    digest = hashlib.sha1()
    root = Path(__file__).resolve().parent.parent  # the package
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _reference_digest(digest: Any, reference: Reference | None) -> None:
    if reference is None:
        digest.update(b"no reference")
        return
    for group in (reference.retrain_features, reference.retrain_logits):
        for name in sorted(group):
            digest.update(name.encode())
            update_digest(digest, np.asarray(group[name]))
    plan = reference.relearn
    if plan is not None:
        update_digest(digest, plan.stream.x, plan.stream.y, plan.heldout.x, plan.heldout.y)
        digest.update(str(plan.n_forget_in_stream).encode())
    digest.update(repr(reference.relearn_target).encode())


def evaluation_cache_path(ckpt: str | Path, split: UnlearningSplit, ds: Dataset, cfg: Config,
                          reference: Reference | None = None) -> Path:
    """Where ``cached_evaluation`` keeps the evaluation of the model saved at ``ckpt``.

    Args:
        ckpt: the checkpoint file.
        split, ds, cfg, reference: as ``cached_evaluation`` takes them.
    Returns:
        ``<checkpoint stem>.eval-<fingerprint>.npz`` beside the checkpoint; the fingerprint adds every
        ``cfg.eval`` setting, the seed, the relearn batch size, the reference and the package's code to
        ``model_data_digest``.

    Example:
        >>> evaluation_cache_path("runs/x/checkpoints/retrain-0123.keras", split, ds, cfg).name  # doctest: +SKIP
        'retrain-0123.eval-e539303cd52f2f06.npz'
    """
    digest = model_data_digest(ckpt, split, ds, cfg.data.eval_batch_size)
    digest.update(json.dumps({"eval": cfg.to_dict()["eval"], "seed": cfg.seed,
                              "relearn_batch_size": cfg.unlearn.batch_size}, sort_keys=True, default=str).encode())
    _reference_digest(digest, reference)
    digest.update(_code_digest().encode())
    return Path(ckpt).with_name(f"{Path(ckpt).stem}.eval-{digest.hexdigest()[:16]}.npz")


def _read(path: Path) -> Evaluation:
    with np.load(path, allow_pickle=False) as z:
        parts: dict[str, dict[str, np.ndarray]] = {"losses": {}, "features": {}, "logits": {}}
        for name in z.files:
            group, _, key = name.partition(".")
            if group in parts:
                parts[group][key] = z[name]
        metrics = json.loads(str(z["metrics"]))
    return Evaluation(metrics, parts["losses"], parts["features"], parts["logits"])


def cached_evaluation(model: keras.Model, ckpt: str | Path, split: UnlearningSplit, ds: Dataset, cfg: Config,
                      reference: Reference | None = None, label: str = "") -> Evaluation:
    """``experiment.context.evaluate_model`` of the model saved at ``ckpt``, read back from
    ``evaluation_cache_path`` when that file exists, computed and saved there otherwise.

    Args:
        model: the model loaded from ``ckpt`` (evaluated only when no cached evaluation fits).
        ckpt: its checkpoint file; the cache file is written beside it.
        split, ds, cfg, reference, label: as ``evaluate_model`` takes them.
    Returns:
        the ``Evaluation``; its ``features`` hold only ``KEPT_FEATURES`` (a read-back one, and a fresh one
        alike, so that a run's results never depend on whether the cache was there).

    Example:
        >>> ev = cached_evaluation(retrain_model, "runs/x/checkpoints/retrain-0123.keras", split, ds, cfg,
        ...                        reference, label="retrain")  # doctest: +SKIP
    """
    path = evaluation_cache_path(ckpt, split, ds, cfg, reference)
    if agree(path.is_file()):
        if label:
            print(f"{label}: evaluation reused from {path} (same model, data, settings and code)", file=sys.stderr,
                  flush=True)
        return _read(path)
    ev = evaluate_model(model, split, ds, cfg, reference, label=label)
    ev = Evaluation(ev.metrics, ev.losses, {k: v for k, v in ev.features.items() if k in KEPT_FEATURES}, ev.logits)
    arrays = {"metrics": np.asarray(json.dumps(ev.metrics))}
    for group, values in (("losses", ev.losses), ("features", ev.features), ("logits", ev.logits)):
        arrays.update({f"{group}.{k}": np.asarray(v) for k, v in values.items()})
    write_npz(path, arrays)
    return ev
