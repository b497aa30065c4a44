"""The experiment's U-LiRA (``--eval-ulira S``): shadow pools in the run folder, scores on the rows.

The shadows are drawn from the run's own training data, D_r and D_f together: the forget
candidates are D_f (the forget class's images, or the ``--forget-fraction`` sample), so each
shadow trains on half of D_r and half of D_f and then forgets its half of D_f, the run's scenario
at half scale. ``api/ulira.py`` says what is trained and attacked; this module keeps each pool in
``ulira/<pool>-<key>.npz`` (every member's weights and its logits on the attacked examples),
reused by a re-run whose settings match (the originals, Retrain and the floor by every method),
and resumed from ``ulira/<pool>-<key>.state.npz`` after a kill. Scores go on each method's row at
its largest epoch count (``ulira_acc`` and its interval, ``ulira_tpr_at_0.01``,
``ulira_tpr_at_0.001``, ``ulira_acc_retain``) beside the original's and the floor's values;
per-example vulnerabilities to ``ulira.npz`` and ``ulira.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunelora_keras.api.ulira import ULiRAReport, Values, ulira
from prunelora_keras.data.datasets import Dataset, Subset, UnlearningSplit
from prunelora_keras.errors import UserError
from prunelora_keras.evaluation.ulira import per_example_accuracy
from prunelora_keras.experiment.config import Config
from prunelora_keras.experiment.context import config_context
from prunelora_keras.models.lora import with_fast_layers
from prunelora_keras.experiment.many_models import check_pool_memory, log, pool_devices
from prunelora_keras.experiment.pool_report import plot_ulira
from prunelora_keras.experiment.stages import paradigm_key, resume, save_epoch, stage_key
from prunelora_keras.models import build_model
from prunelora_keras.models.precision import training_model
from prunelora_keras.parallel.multihost import agree, host_value
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.training.checkpoint import remove_file, write_npz
from prunelora_keras.training.loop import EpochStats
from prunelora_keras.training.pool_trainer import PoolTrainer


def check_ulira(cfg: Config, ds: Dataset, distribution: Any) -> None:
    """Refuse, before anything trains, an S that cannot run: another backend, or pools of S shadows
    larger than the free memory (S odd or < 6 and continual requests are refused with the options)."""
    if keras.backend.backend() != "jax":
        raise UserError("--eval-ulira trains its shadows with the compiled JAX step: unset KERAS_BACKEND (now "
                        f"{keras.backend.backend()}) or drop --eval-ulira")
    check_pool_memory(cfg, ds, distribution, cfg.eval.ulira, "--eval-ulira", "shadow models")


def _key(*payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def pool_runner(folder: Path, keys: dict[str, str], eval_batch_size: int):
    """The ``PoolRunner`` that keeps each pool in ``folder``: reuse a finished one, else resume a
    killed one from its epoch-end state, train, and save weights and logits."""

    def run(name: str, make_pool, epochs: int, inputs: np.ndarray) -> tuple[np.ndarray, list[Values]]:
        path = folder / f"{name}-{keys[name]}.npz"
        if agree(path.is_file()):  # every process takes the same path through the collectives
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(bytes(z["meta"]).decode())
                    values = [([z[f"m{k}_t{i}"] for i in range(meta["trainable"])],
                               [z[f"m{k}_n{i}"] for i in range(meta["non_trainable"])]) for k in range(meta["k"])]
                    log(f"ulira {name} pool: reusing {path}")
                    return z["logits"], values
            except (OSError, ValueError, KeyError, EOFError) as exc:
                log(f"ulira {name} pool: {path} cannot be read ({exc}); training it again")
        state_path = path.with_name(path.name.replace(".npz", ".state.npz"))
        pool: PoolTrainer = make_pool()
        history: list[EpochStats] = []
        first = resume(pool, state_path, f"ulira-{name}", history)

        def on_epoch_end(stats: EpochStats) -> None:
            history.append(stats)
            save_epoch(state_path, pool, f"ulira-{name}", history)

        start = time.perf_counter()
        if first <= epochs:
            pool.fit(epochs - first + 1, first_epoch=first, on_epoch_end=on_epoch_end)
        logits = pool.logits(inputs, eval_batch_size)
        values = [tuple([host_value(a) for a in part] for part in pool.member_values(k)) for k in range(pool.k)]
        arrays = {"logits": logits, **{f"m{k}_t{i}": a for k, (t, _) in enumerate(values) for i, a in enumerate(t)},
                  **{f"m{k}_n{i}": a for k, (_, n) in enumerate(values) for i, a in enumerate(n)}}
        meta = {"pool": name, "k": pool.k, "trainable": len(values[0][0]), "non_trainable": len(values[0][1]),
                "seeds": [int(s) for s in pool.seeds], "train_s": time.perf_counter() - start,
                "history": [dataclasses.asdict(h) for h in history]}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        write_npz(path, arrays)
        remove_file(state_path)
        return logits, values

    return run


def run_ulira(cfg: Config, ds: Dataset, split: UnlearningSplit, original_ckpt: str, out_dir: Path, data_id: str,
              rows: list[dict[str, Any]], distribution: Any = None) -> ULiRAReport:
    """Train (or reuse) every shadow pool of the run, attack each method, put the scores on ``rows``
    and write ``ulira.npz`` and ``ulira.png``. Returns the report."""
    e, u, s = cfg.eval, cfg.unlearn, cfg.eval.ulira
    x = np.concatenate([split.retain.x, split.forget.x])
    y = np.concatenate([split.retain.y, split.forget.y])
    candidates = np.r_[np.zeros(len(split.retain), bool), np.ones(len(split.forget), bool)]
    shadow = {"shadows": s, "seed": cfg.seed, "data": data_id, "forget_class": cfg.data.forget_class,
              "forget_fraction": cfg.data.forget_fraction, "retain_sample": e.ulira_retain_sample}
    keys = {"original": _key("original", stage_key(cfg, "original", cfg.pretrain, data_id), shadow),
            "retrain": _key("retrain", stage_key(cfg, "retrain", cfg.retrain, data_id), shadow),
            "floor": _key("floor", stage_key(cfg, "retrain", cfg.retrain, data_id), shadow)}
    for name in u.paradigms:
        keys[name] = _key(name, paradigm_key(name, cfg, original_ckpt), keys["original"])

    def make(seed: int) -> keras.Model:
        return build_model(cfg.model, ds.num_classes, ds.image_shape)

    def context(name: str, model: keras.Model, retain: Subset, forget: Subset, seed: int):
        model = training_model(with_fast_layers(model), u.precision)  # as prepare_paradigm loads the original
        set_bn_policy(model, u.bn)
        shadow_split = dataclasses.replace(split, retain=retain, forget=forget)
        return config_context(dataclasses.replace(cfg, seed=seed), name, model, ds, shadow_split)

    log(f"U-LiRA: {s} shadows on halves of D_r ({len(split.retain)}) and D_f ({len(split.forget)}); pools: originals, "
        f"Retrain, the floor and {len([m for m in u.paradigms if m != 'retrain'])} methods")
    report = ulira(make, x, y, candidates, methods=list(u.paradigms), shadows=s, pretrain=cfg.pretrain,
                   retrain=cfg.retrain, epochs=max(u.epochs), batch_size=cfg.data.batch_size,
                   num_classes=ds.num_classes, preprocess=ds.preprocess, seed=cfg.seed,
                   retain_sample=e.ulira_retain_sample, fixed_variance=e.ulira_fixed_variance,
                   bootstrap=e.ulira_bootstrap, context=context,
                   run_pool=pool_runner(out_dir / "ulira", keys, cfg.data.eval_batch_size),
                   mode=e.models_mode, devices=pool_devices(distribution))
    attach(rows, report)
    save_per_example(report, out_dir / "ulira.npz")
    plot_ulira(report, out_dir / "ulira.png", f"{cfg.model.name}: U-LiRA per example, S = {s}")
    return report


def attach(rows: list[dict[str, Any]], report: ULiRAReport) -> None:
    """Each method's scores on its row at its largest epoch count (Retrain's: the floor's), with
    the original's and the floor's accuracy beside them."""
    scores = report.rows()
    reference = {"ulira_acc_original": scores["original"]["ulira_acc"], "ulira_acc_floor": scores["retrain"]["ulira_acc"],
                 "ulira_acc_retain_original": scores["original"]["ulira_acc_retain"],
                 "ulira_shadows": int(report.halves.shape[0])}
    for name, values in scores.items():
        mine = [r for r in rows if r["paradigm"] == name and r.get("status", "ok") == "ok"]
        if mine and name != "original":
            max(mine, key=lambda r: r["epochs"]).update(values, **reference)
    for name, why in report.failed.items():  # a diverged shadow pool: no scores for that method, said on its row
        mine = [r for r in rows if r["paradigm"] == name and r.get("status", "ok") == "ok"]
        if mine:
            max(mine, key=lambda r: r["epochs"])["ulira_status"] = f"non-finite loss ({why})"


def save_per_example(report: ULiRAReport, path: Path) -> None:
    """``ulira.npz``: per model, ``<model>/forget_examples``, ``<model>/forget_acc`` (each candidate's
    own balanced accuracy) and the same for ``retain``; the shadows' halves and the candidates."""
    arrays: dict[str, np.ndarray] = {"halves": report.halves, "candidates": report.candidates,
                                     "retain_sample": report.retain_sample}
    for side, results in (("forget", report.forget), ("retain", report.retain)):
        for name, r in results.items():
            arrays[f"{name}/{side}_examples"], arrays[f"{name}/{side}_acc"] = per_example_accuracy(r)
    write_npz(path, arrays)
