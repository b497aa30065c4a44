"""The experiment: data -> original model (pretrain) -> Retrain -> evaluation -> run folder.

Each stage trains through the one ``Trainer`` loop. Trained models are saved as ``.keras`` files
in the run folder under a key derived from everything that determines them (model, data,
recipe, seed), so a later run with the same settings reuses them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import keras
import numpy as np

from prunelora_keras import __version__
from prunelora_keras.config import Config, TrainConfig
from prunelora_keras.data import Dataset, UnlearningSplit, Subset, load_dataset, make_split, num_batches
from prunelora_keras.errors import UserError
from prunelora_keras.models import build_model
from prunelora_keras.train import EpochStats, Trainer, accuracy, make_optimizer, predict_logits, set_bn_policy

CUSTOM_OBJECTS: dict[str, Any] = {}  # registered layers are found through keras.saving's registry


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def device_description() -> str:
    dev = jax.local_devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    if dev.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return f"{dev.platform}: {kind} x{jax.local_device_count()}"


def versions() -> dict[str, str]:
    import optax

    return {"prunelora_keras": __version__, "keras": keras.__version__, "jax": jax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version()}


def has_accelerator() -> bool:
    return any(d.platform != "cpu" for d in jax.devices())


@dataclass
class StageResult:
    """What one trained model scores, plus how its training went."""

    name: str
    accuracies: dict[str, float]  # percent, per evaluation set
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str = ""
    reused: bool = False
    seconds: float = 0.0


def evaluate_sets(model: keras.Model, split: UnlearningSplit, ds: Dataset, batch_size: int) -> dict[str, float]:
    """Accuracy in percent on each evaluation set of the split."""
    sets = {"train": split.train, "test": split.test, "retain": split.retain, "forget": split.forget,
            "test_retain": split.test_retain, "test_forget": split.test_forget}
    out = {}
    for name, subset in sets.items():
        if len(subset):
            out[name] = 100.0 * accuracy(predict_logits(model, subset.x, ds.mean, ds.std, batch_size), subset.y)
    return out


def stage_key(cfg: Config, stage: str, recipe: TrainConfig, data_id: str) -> str:
    """A short hash of everything that determines a trained model."""
    payload = {"stage": stage, "model": asdict(cfg.model), "recipe": asdict(recipe), "seed": cfg.seed,
               "data": data_id, "forget_class": cfg.data.forget_class if stage == "retrain" else None,
               "batch_size": cfg.data.batch_size, "drop_last": cfg.data.drop_last}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def data_identity(cfg: Config) -> str:
    d = cfg.data
    return json.dumps({"dataset": d.dataset, "data_dir": str(Path(d.data_dir).resolve()) if d.data_dir else "",
                       "train_size": d.train_size, "test_size": d.test_size})


def train_stage(name: str, cfg: Config, recipe: TrainConfig, data: Subset, ds: Dataset, split: UnlearningSplit,
                out_dir: Path, data_id: str) -> tuple[keras.Model, StageResult]:
    """Train (or reuse) one model from scratch on ``data`` with ``recipe``; evaluate it."""
    ckpt = out_dir / "checkpoints" / f"{name}-{stage_key(cfg, name, recipe, data_id)}.keras"
    history: list[EpochStats] = []
    start = time.perf_counter()
    if ckpt.is_file():
        log(f"{name}: reusing {ckpt}")
        model = keras.saving.load_model(ckpt, compile=False, safe_mode=True)
        reused = True
    else:
        keras.utils.set_random_seed(cfg.seed)
        model = build_model(cfg.model, ds.num_classes, ds.image_shape)
        set_bn_policy(model, recipe.bn)
        steps = num_batches(len(data), cfg.data.batch_size, cfg.data.drop_last) * recipe.epochs
        trainer = Trainer(model, make_optimizer(recipe, steps), ds.num_classes, ds.mean, ds.std,
                          augment=recipe.augment, mixup_alpha=recipe.mixup_alpha, seed=cfg.seed, label=name)
        history = trainer.fit(data.x, data.y, recipe.epochs, cfg.data.batch_size, cfg.data.drop_last)
        set_bn_policy(model, "update")  # saved models are plain: every layer trainable
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name(f".{ckpt.stem}.tmp.keras")
        model.save(tmp)
        os.replace(tmp, ckpt)
        reused = False
    acc = evaluate_sets(model, split, ds, cfg.data.eval_batch_size)
    result = StageResult(name, acc, [asdict(h) for h in history], str(ckpt), reused, time.perf_counter() - start)
    return model, result


def load_data(cfg: Config) -> tuple[Dataset, UnlearningSplit]:
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    split = make_split(ds, cfg.data.forget_class, cfg.data.train_size, cfg.data.test_size, cfg.seed)
    if cfg.model.name == "vit":
        h, w = ds.image_shape[:2]
        if h % cfg.model.patch_size or w % cfg.model.patch_size:
            raise UserError(f"model.patch_size {cfg.model.patch_size} does not divide the {h}x{w} images of "
                            f"{ds.name}: choose a divisor, e.g. --set model.patch_size=2")
    return ds, split


def run_pipeline(cfg: Config, out_dir: Path, ds: Dataset | None = None,
                 split: UnlearningSplit | None = None) -> dict[str, Any]:
    """Run the whole experiment for ``cfg`` into ``out_dir``; returns the results dictionary."""
    start = time.perf_counter()
    if ds is None or split is None:
        ds, split = load_data(cfg)
    log(f"data: {ds.name}, train {len(split.train)} (retain {len(split.retain)}, forget {len(split.forget)} of class "
        f"{split.forget_class} '{ds.class_names[split.forget_class]}'), test {len(split.test)}, images {ds.image_shape}")
    data_id = data_identity(cfg)
    _, original = train_stage("original", cfg, cfg.pretrain, split.train, ds, split, out_dir, data_id)
    _, retrain = train_stage("retrain", cfg, cfg.retrain, split.retain, ds, split, out_dir, data_id)
    results = {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "device": device_description(),
        "versions": versions(),
        "data": {"dataset": ds.name, "train": len(split.train), "test": len(split.test), "retain": len(split.retain),
                 "forget": len(split.forget), "test_retain": len(split.test_retain),
                 "forget_class": split.forget_class, "class_name": ds.class_names[split.forget_class]},
        "stages": {r.name: asdict(r) for r in (original, retrain)},
        "wall_s": time.perf_counter() - start,
    }
    return results


def accuracy_table(results: dict[str, Any]) -> str:
    """A markdown table of each stage's accuracy per evaluation set."""
    cols = [("train", "train"), ("test", "test (all classes)"), ("retain", "RA (D_r)"),
            ("forget", "D_f acc"), ("test_retain", "TA (test, remaining)"), ("test_forget", "test, forget class")]
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, stage in results["stages"].items():
        cells = [f"{stage['accuracies'][k]:.2f}" if k in stage["accuracies"] else "-" for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    """results.json and results.md, written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=2)), ("results.md", accuracy_table(results) + "\n")):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
