"""Models trained from scratch: the original model and Retrain, reused, resumed, evaluated.

A stage's finished model is a ``.keras`` file under a key derived from everything that determines
it (model, data, recipe, seed), so a later run with the same settings reuses it; while it trains,
its epoch-end state is saved, and a re-run continues from there.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunelora_keras.training.checkpoint import (atomic_write_bytes, fault_point, load_state, read_meta, remove_file,
    save_model, save_state, write_npz)
from prunelora_keras.experiment.config import Config
from prunelora_keras.experiment.eval_cache import model_data_digest
from prunelora_keras.experiment.identity import keyed
from prunelora_keras.training.recipe import TrainConfig, recipe_identity
from prunelora_keras.data.datasets import Dataset, Subset, UnlearningSplit
from prunelora_keras.data.batches import num_batches
from prunelora_keras.evaluation.evaluate import evaluate_sets
from prunelora_keras.evaluation.metrics import accuracy_pct
from prunelora_keras.training.inference import tta_logits
from prunelora_keras.models import build_model
from prunelora_keras.models.airbench import init_whitening
from prunelora_keras.parallel.multihost import agree
from prunelora_keras.training.loop import EpochStats, Trainer
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.training.trainers import scratch_trainer
from prunelora_keras.models.weights import load_weights_file
from prunelora_keras.models.precision import training_model


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class StageResult:
    """What one trained model scores, plus how its training went."""

    name: str
    accuracies: dict[str, float]  # percent, per evaluation set
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str = ""
    reused: bool = False
    seconds: float = 0.0


def paradigm_key(name: str, cfg: Config, original_ckpt: str) -> str:
    """A short hash of everything that determines a paradigm's results (not which others run)."""
    config = keyed(cfg.to_dict())  # fields added later, where they change nothing, keep earlier keys
    config["unlearn"] = {k: v for k, v in config["unlearn"].items() if k != "paradigms"}
    config["methods"] = config["methods"].get(name)  # this method's hyperparameters, not the others'
    config.pop("devices", None)  # results agree across device counts up to float summation order
    payload = {"paradigm": name, "config": config, "original": Path(original_ckpt).name}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def stage_key(cfg: Config, stage: str, recipe: TrainConfig, data_id: str) -> str:
    """A short hash of everything that determines a trained model."""
    model = keyed({"model": asdict(cfg.model)})["model"]
    weights = model.pop("weights", "")
    recipe_id = recipe_identity(recipe)  # fields added later, at their defaults, leave earlier runs' keys as they were
    payload = {"stage": stage, "model": model, "recipe": recipe_id, "seed": cfg.seed,
               "data": data_id, "forget_class": cfg.data.forget_class if stage == "retrain" else None,
               **({"forget_fraction": cfg.data.forget_fraction} if stage == "retrain" and cfg.data.forget_fraction else {}),
               **({"forget_classes": cfg.data.forget_classes} if stage == "retrain" and cfg.data.forget_classes else {}),
               "batch_size": cfg.data.batch_size, "drop_last": cfg.data.drop_last}
    if weights and stage == "original":  # given, not trained: the file (path, size, time) is the identity
        stat = Path(weights).expanduser().stat()
        payload["weights"] = [str(Path(weights).expanduser().resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def data_identity(cfg: Config) -> str:
    d = cfg.data
    return json.dumps({"dataset": d.dataset, "data_dir": str(Path(d.data_dir).resolve()) if d.data_dir else "",
                       "train_size": d.train_size, "test_size": d.test_size,
                       **({"labels": d.labels} if d.labels != "fine" else {}),  # what changes the data, when set
                       **({"image_size": d.image_size} if d.image_size else {})})


def train_stage(name: str, cfg: Config, recipe: TrainConfig, data: Subset, ds: Dataset, split: UnlearningSplit,
                out_dir: Path, data_id: str, distribution: Any = None, ckpt_dir: Path | None = None
                ) -> tuple[keras.Model, StageResult]:
    """Train (or reuse, or resume) one model from scratch on ``data`` with ``recipe``; evaluate it.

    The finished model is ``checkpoints/<name>-<key>.keras`` (in ``ckpt_dir`` when given: e.g. one
    original model shared by the per-class runs of ``--forget-each``); while it trains, its
    epoch-end state is ``checkpoints/<name>-<key>.state.npz``, from which a re-run continues.
    """
    key = stage_key(cfg, name, recipe, data_id)
    ckpt = (ckpt_dir or out_dir / "checkpoints") / f"{name}-{key}.keras"
    state_path = ckpt.with_name(f"{name}-{key}.state.npz")
    history: list[EpochStats] = []
    start = time.perf_counter()
    sidecar = ckpt.with_suffix(".history.json")
    # Decided together: in a multi-process job a late process would otherwise find the model that
    # process 0 has just saved (from --weights) and take another path through the collectives.
    if agree(ckpt.is_file()):
        log(f"{name}: reusing {ckpt}")
        model = keras.saving.load_model(ckpt, compile=False, safe_mode=True)
        history = [EpochStats(**h) for h in json.loads(sidecar.read_text())] if sidecar.is_file() else []
        reused = True
    elif name == "original" and cfg.model.weights:
        model = build_model(cfg.model, ds.num_classes, ds.image_shape)
        load_weights_file(cfg.model.weights, model)  # safe: no code from the file runs; names and shapes checked
        log(f"{name}: weights from {cfg.model.weights} (no pretraining)")
        save_model(model, ckpt)
        reused = False
    else:
        keras.utils.set_random_seed(cfg.seed)
        model = build_model(cfg.model, ds.num_classes, ds.image_shape)
        init_whitening(model, data.x, ds.preprocess)  # airbench's stem, from the first images it trains on
        trained = training_model(model, recipe.precision)  # bfloat16: a mixed-policy copy, float32 variables
        set_bn_policy(trained, recipe.bn)
        steps = num_batches(len(data), cfg.data.batch_size, cfg.data.drop_last) * recipe.epochs
        trainer = scratch_trainer(trained, recipe, steps, ds, cfg.seed, name, distribution)
        resumable = isinstance(trainer, Trainer)  # the compiled loop's state saves; Keras's fit is not resumable
        first = resume(trainer, state_path, name, history) if resumable else 1

        def on_epoch_end(stats: EpochStats) -> None:
            history.append(stats)
            if resumable:
                save_epoch(state_path, trainer, name, history)

        if first <= recipe.epochs:
            trainer.fit(data.x, data.y, recipe.epochs - first + 1, cfg.data.batch_size, cfg.data.drop_last,
                        on_epoch_end, first_epoch=first)
        trainer.sync_to_model()
        if trained is not model:  # the float32 master weights go back into the float32 model
            model.set_weights(trained.get_weights())
        set_bn_policy(model, "update")  # saved models are plain: every layer trainable
        save_model(model, ckpt)
        atomic_write_bytes(sidecar, json.dumps([asdict(h) for h in history]).encode())
        remove_file(state_path)
        reused = False
    acc = stage_accuracies(model, ckpt, split, ds, cfg)
    result = StageResult(name, acc, [asdict(h) for h in history], str(ckpt), reused, time.perf_counter() - start)
    return model, result


def stage_accuracies(model: keras.Model, ckpt: Path, split: UnlearningSplit, ds: Dataset, cfg: Config) -> dict:
    """The model's accuracy on every set of the split (and with TTA on the test set when ``eval.tta``),
    read back from ``<ckpt>.acc-<fingerprint>.json`` when the same checkpoint file was evaluated on the
    same data before: every stage of a run that reuses a model (a resumed run, the testbed's stages
    sharing one original) would otherwise spend minutes recomputing the same numbers. The fingerprint
    hashes the checkpoint's bytes, every image and label of the split, the preprocessing and the
    evaluation's settings, so a cached number is never one of another model or other data."""
    digest = model_data_digest(ckpt, split, ds, cfg.data.eval_batch_size, cfg.eval.tta)  # the bytes of 2026-12-07
    cache = Path(ckpt).with_name(f"{Path(ckpt).stem}.acc-{digest.hexdigest()[:16]}.json")
    if agree(cache.is_file()):
        return json.loads(cache.read_text())
    acc = evaluate_sets(model, split, ds, cfg.data.eval_batch_size)
    if cfg.eval.tta:  # beside the plain test accuracy, never instead
        acc["test_tta"] = accuracy_pct(tta_logits(model, split.test.x, ds.preprocess, cfg.data.eval_batch_size,
                                                  cfg.eval.tta), split.test.y)
    atomic_write_bytes(cache, json.dumps(acc).encode())
    return acc


def save_epoch(state_path: Path, trainer: Trainer, name: str, history: list[EpochStats], **extra: Any) -> None:
    """A stage's epoch-end state (weights, optimiser, history and ``extra`` such as finished rows), from
    which :func:`resume` continues; then the test hook that may kill the process right there."""
    epoch = history[-1].epoch
    save_state(state_path, trainer, {"stage": name, "epoch": epoch, **extra, "history": [asdict(h) for h in history]})
    fault_point(name, epoch)


def resume(trainer: Trainer, state_path: Path, name: str, history: list[EpochStats]) -> int:
    """Restore ``trainer`` from a saved epoch-end state if there is one; returns the next epoch.

    Fills ``history`` with the saved epochs' statistics. A state file that does not fit (written
    by another version, or damaged) is reported on stderr and left where it is: training starts
    over from epoch 1, and the first epoch-end save overwrites it (``save_state`` writes atomically),
    so nothing of it is kept. ``trainer`` is untouched then: ``load_state`` checks before it restores.
    """
    meta = read_meta(state_path) if state_path.is_file() else None
    if meta is None:
        if state_path.is_file():
            log(f"{name}: {state_path} cannot be read; starting this stage over")
        return 1
    try:
        load_state(state_path, trainer)
    except (ValueError, KeyError, OSError) as exc:
        log(f"{name}: {exc}; starting this stage over")
        return 1
    history[:] = [EpochStats(**h) for h in meta["history"]]
    log(f"{name}: resuming after epoch {meta['epoch']} from {state_path}")
    return int(meta["epoch"]) + 1


def load_finished(done: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """A finished paradigm's rows and its loss arrays (``save_finished``'s files), for a re-run to reuse."""
    rows = json.loads(done.read_text())
    losses_path = done.with_suffix(".losses.npz")
    losses = None
    if losses_path.is_file():
        with np.load(losses_path, allow_pickle=False) as z:
            losses = {k: z[k] for k in z.files}
    return rows, losses


def save_finished(done: Path, rows: list[dict[str, Any]], losses: dict[str, np.ndarray] | None) -> None:
    """Write a paradigm's rows and loss arrays; the rows file last, so its presence means "finished"."""
    if losses is not None:
        write_npz(done.with_suffix(".losses.npz"), losses)
    atomic_write_bytes(done, json.dumps(rows, indent=1).encode())  # last: its presence means "finished"


def forget_description(split: UnlearningSplit, ds: Dataset) -> str:
    """What is forgotten, in words: one class, several classes, or a random fraction of the training set."""
    if len(split.forget_classes) > 1:
        return "classes " + ", ".join(f"{c} '{ds.class_names[c]}'" for c in split.forget_classes)
    if split.forget_class < 0:
        return f"a random {len(split.forget) / len(split.train):.0%} of the training set, every class"
    return f"class {split.forget_class} '{ds.class_names[split.forget_class]}'"
