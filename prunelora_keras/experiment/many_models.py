"""The experiment's many-model evaluation (``--eval-models K``): pools, their files, the scores.

For a run with K > 0 this trains, besides the single models of the table:
- the oracle pool: K Retrain models (K seeds, D_r only), the reference of both scores;
- the ceiling pool: K more Retrain models on other seeds, scored against the oracle exactly as a
  method is. A perfect unlearner is indistinguishable from Retrain, and this is what such a pool
  scores at this K (the threshold search overfits finite pools, so it is well below 1);
- per method, K unlearning runs from the same original model that differ only in their seed.

Each finished pool is ``pools/<name>-<key>.npz`` (stacked weights and the pool's logits on D_f,
D_r and the retained test set), reused by re-runs whose settings match; while it trains, its
epoch-end state is ``pools/<name>-<key>.state.npz``, from which a killed run resumes.
Scores go to the rows at the largest epoch count (``forgetting_quality``, its ceiling,
``klom_forget``/``klom_retain``/``klom_test`` with ``_median``/``_p95``, RMIA of each member with the oracle
pool as reference models, random forgetting: ``pool_rmia_auc``, ``pool_rmia_tpr_1pct``), per-example values to
``per_example.npz``, their histograms to ``forgetting_quality.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunelora_keras.evaluation import forgetting_quality as fq
from prunelora_keras.evaluation.rmia import rmia_test
from prunelora_keras.training.checkpoint import read_meta, remove_file, write_npz
from prunelora_keras.parallel.multihost import agree, host_value
from prunelora_keras.experiment.config import Config
from prunelora_keras.data.datasets import Dataset, UnlearningSplit
from prunelora_keras.training.pool_trainer import PoolTrainer, choose_mode, member_seeds
from prunelora_keras.errors import UserError
from prunelora_keras.models import build_model
from prunelora_keras.api.pools import available_bytes, method_pool, pool_bytes, scratch_pool
from prunelora_keras.models.precision import training_model
from prunelora_keras.experiment.stages import resume, save_epoch, stage_key
from prunelora_keras.training.loop import EpochStats
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.experiment.context import config_context
from prunelora_keras.models.lora import with_fast_layers
from prunelora_keras.training.trainers import scratch_trainer

SETS = ("forget", "retain", "test_retain")
MEMORY_SHARE = 0.8  # of the free memory a pool may plan to use


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pool_devices(distribution: Any) -> list | None:
    """The devices a pool shards its K axis over (those of ``--devices``), or None for one."""
    if distribution is None:
        return None
    return list(distribution.device_mesh.backend_mesh.devices.flatten())


def check_pools(cfg: Config, ds: Dataset, distribution: Any) -> None:
    """Refuse, before anything trains, a K that cannot run: wrong backend, continual requests, a K
    that does not split over the devices, or a pool larger than the free memory (one line naming
    the largest K that fits)."""
    k = cfg.eval.models
    if not k:
        return
    if keras.backend.backend() != "jax":
        raise UserError("--eval-models trains its pools with the compiled JAX step: unset KERAS_BACKEND (now "
                        f"{keras.backend.backend()}) or drop --eval-models")
    if cfg.data.forget_classes:
        raise UserError("--eval-models scores one forget request; it does not combine with continual requests "
                        "(--forget-class N,M,...): pass one class or --forget-fraction")
    check_pool_memory(cfg, ds, distribution, k, "--eval-models", "models")


def check_pool_memory(cfg: Config, ds: Dataset, distribution: Any, k: int, flag: str, what: str) -> None:
    """Refuse pools of ``k`` members of the run's model that do not split over the devices or do
    not fit the free memory (one line naming the largest K that fits); log the estimate."""
    devices = pool_devices(distribution)
    if devices and k % len(devices):
        raise UserError(f"{flag} {k} does not split over {len(devices)} devices: pass a multiple of "
                        f"{len(devices)} or --devices with a divisor of {k}")
    mode = choose_mode(cfg.eval.models_mode, devices)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, ds.num_classes, ds.image_shape)
    trainer = scratch_trainer(model, cfg.retrain, 1, ds, cfg.seed, "estimate")
    state, work, shared = pool_bytes(trainer, cfg.data.batch_size)
    per, once = (state + work, shared) if mode == "vmap" else (state, shared + work)
    per = max(per, 1)
    need, free = k * per + once, available_bytes()
    budget = MEMORY_SHARE * free
    if need > budget:
        largest = int((budget - once) // per)
        raise UserError(f"{flag} {k}: a pool of {k} {cfg.model.name} {what} needs about {need / 1e9:.2f} GB "
                        f"({per / 1e6:.1f} MB per model, {mode} mode) but {free / 1e9:.2f} GB is free here; the "
                        f"largest {'K' if flag == '--eval-models' else 'S'} that fits is {max(largest, 0)}" + ("" if largest >= 2 else
                                                                            " (too few: use a smaller model or preset)"))
    log(f"{flag}: pools of {k} {what} ({mode} mode), about {need / 1e9:.2f} GB each ({free / 1e9:.1f} GB free)"
        + ("; at K = 2 forgetting quality has no bin to score (it is 0 for every method), only KLoM says something"
           if k == 2 and flag == "--eval-models" else ""))


def pool_key(kind: str, payload: Any) -> str:
    return hashlib.sha256(json.dumps({"pool": kind, "of": payload}, sort_keys=True).encode()).hexdigest()[:12]


def _load_pool(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {s: z[f"logits_{s}"] for s in SETS}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _save_pool(path: Path, pool: PoolTrainer, logits: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    state = pool.state()  # stacked over the members
    arrays = {f"train_{i}": host_value(v) for i, v in enumerate(state.train)}
    arrays.update({f"nt_{i}": host_value(v) for i, v in enumerate(state.non_trainable)})
    arrays.update({f"logits_{s}": logits[s] for s in SETS})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_npz(path, arrays)


def train_pool(name: str, make_pool, epochs: int, path: Path, split: UnlearningSplit,
               eval_batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train (or reuse, or resume) one pool; returns its logits per set and facts about its training."""
    if agree(path.is_file()):  # every process takes the same path through the collectives
        logits = _load_pool(path)
        if logits is not None:
            meta = read_meta(path) or {}
            log(f"{name} pool: reusing {path}")
            return logits, meta.get("facts", {})
    state_path = path.with_name(path.name.replace(".npz", ".state.npz"))
    pool: PoolTrainer = make_pool()
    history: list[EpochStats] = []
    first = resume(pool, state_path, f"pool-{name}", history)
    start = time.perf_counter()

    def on_epoch_end(stats: EpochStats) -> None:
        history.append(stats)
        save_epoch(state_path, pool, f"pool-{name}", history)

    if first <= epochs:
        pool.fit(epochs - first + 1, first_epoch=first, on_epoch_end=on_epoch_end)
    logits = {s: pool.logits(getattr(split, s).x, eval_batch_size) for s in SETS}
    facts = {"k": pool.k, "mode": pool.mode, "epochs": epochs, "train_s": time.perf_counter() - start,
             "epoch_s": float(np.mean([h.seconds for h in history])) if history else float("nan"),
             "compile_s": history[0].compile_s if history else float("nan")}
    _save_pool(path, pool, logits, {"pool": name, "seeds": [int(s) for s in pool.seeds], "facts": facts,
                                    "history": [dataclasses.asdict(h) for h in history]})
    remove_file(state_path)
    return logits, facts


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Pool-mean accuracy in percent."""
    return float(np.mean(np.argmax(logits, -1) == labels[None])) * 100.0


def score_pool(pool: dict[str, np.ndarray], oracle: dict[str, np.ndarray], split: UnlearningSplit,
               retain_sample: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(row columns, per-example arrays) of one pool against the oracle pool."""
    y = {s: getattr(split, s).y for s in SETS}
    quality = fq.forgetting_quality(pool["forget"], oracle["forget"], y["forget"],
                                    ra=(_accuracy(pool["retain"], y["retain"]), _accuracy(oracle["retain"], y["retain"])),
                                    ta=(_accuracy(pool["test_retain"], y["test_retain"]),
                                        _accuracy(oracle["test_retain"], y["test_retain"])))
    per_example = {"epsilon_forget": quality.epsilon,
                   "klom_forget": fq.klom(pool["forget"], oracle["forget"], y["forget"]),
                   "klom_retain": fq.klom(pool["retain"][:, retain_sample], oracle["retain"][:, retain_sample],
                                          y["retain"][retain_sample]),
                   "klom_test": fq.klom(pool["test_retain"], oracle["test_retain"], y["test_retain"])}
    # How much the pool's members disagree, relative to Retrain's: runs that all start from one original can
    # vary much less over seeds than models trained from scratch (pinned to the original) or more; the score
    # compares whole distributions, so both show.
    conf_u = fq.logit_scaled_confidence(pool["forget"], y["forget"])
    conf_r = fq.logit_scaled_confidence(oracle["forget"], y["forget"])
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = float(np.median(conf_u.std(axis=0) / conf_r.std(axis=0)))
    row = {"forgetting_quality": quality.score, "spread_ratio_forget": spread, "forget_score": quality.forget_score,
           "pool_RA": _accuracy(pool["retain"], y["retain"]), "pool_TA": _accuracy(pool["test_retain"], y["test_retain"]),
           "pool_UA": 100.0 - _accuracy(pool["forget"], y["forget"]), "eval_models": quality.num_models,
           "epsilon_median": float(np.median(quality.epsilon))}
    # RMIA: each member attacked with the oracle pool as its reference models, D_f against the test set; random
    # forgetting only (class-wise it needs the forgotten class's test images, which the pools do not keep)
    if len(y["test_retain"]) >= 2 and not len(split.test_forget):
        rmia = rmia_test({s: pool[s] for s in ("forget", "test_retain")}, {s: oracle[s] for s in ("forget", "test_retain")},
                         y)
        row.update(pool_rmia_auc=rmia.auc, pool_rmia_tpr_1pct=rmia.tpr_at_1pct)
    for name in ("klom_forget", "klom_retain", "klom_test"):
        stats = fq.summarize(per_example[name])
        row.update({name: stats["mean"], f"{name}_median": stats["median"], f"{name}_p95": stats["p95"]})
    return row, per_example


def run_pools(cfg: Config, ds: Dataset, split: UnlearningSplit, original_ckpt: str, out_dir: Path, data_id: str,
              rows: list[dict[str, Any]], distribution: Any = None) -> dict[str, dict[str, np.ndarray]]:
    """Train every pool of the run, score each method's against the oracle, and add the scores to
    ``rows`` (at each method's largest epoch count; Retrain's row gets the ceiling pool's).
    Returns the per-example values by method."""
    from prunelora_keras.experiment.stages import paradigm_key

    u, k = cfg.unlearn, cfg.eval.models
    devices, mode = pool_devices(distribution), cfg.eval.models_mode
    pools_dir = out_dir / "pools"

    def retrain_pool(tag: str):
        seeds = member_seeds(cfg.seed, tag, k)
        key = pool_key(tag, [stage_key(cfg, "retrain", cfg.retrain, data_id), seeds])
        return pools_dir / f"{tag}-{key}.npz", lambda: scratch_pool(
            lambda s: build_model(cfg.model, ds.num_classes, ds.image_shape), cfg.retrain, split.retain.x,
            split.retain.y, cfg.data.batch_size, ds.num_classes, ds.preprocess, seeds, drop_last=cfg.data.drop_last,
            mode=mode, devices=devices, label=tag)

    logits: dict[str, dict[str, np.ndarray]] = {}
    facts: dict[str, dict[str, Any]] = {}
    for tag in ("retrain", "retrain_ceiling"):
        path, make = retrain_pool(tag)
        logits[tag], facts[tag] = train_pool(tag, make, cfg.retrain.epochs, path, split, cfg.data.eval_batch_size)
    for name in u.paradigms:
        if name == "retrain":
            continue
        seeds = member_seeds(cfg.seed, "unlearn", k)  # every method's pool: the same K seeds
        path = pools_dir / f"{name}-{pool_key(name, [paradigm_key(name, cfg, original_ckpt), seeds])}.npz"

        def make_context(seed: int, name=name):  # member k is the single run of seed k: prepare_paradigm's own path
            keras.utils.set_random_seed(seed)
            original = keras.saving.load_model(original_ckpt, compile=False, safe_mode=True)
            original = training_model(with_fast_layers(original), u.precision)
            set_bn_policy(original, u.bn)
            return config_context(dataclasses.replace(cfg, seed=seed), name, original, ds, split)

        try:
            logits[name], facts[name] = train_pool(name, lambda name=name, seeds=seeds: method_pool(
                name, make_context, seeds, mode=mode, devices=devices), max(u.epochs), path, split,
                cfg.data.eval_batch_size)
        except FloatingPointError as exc:  # one method's pool diverged: it has no scores, the others still run
            log(f"{name} pool: stopped: {exc}")
            _attach(rows, name, {"pool_status": f"non-finite loss ({exc})"}, float("nan"))
    n = min(cfg.eval.models_retain_sample, len(split.retain))
    retain_sample = np.sort(np.random.default_rng([cfg.seed, 7]).choice(len(split.retain), n, replace=False))
    per_example: dict[str, dict[str, np.ndarray]] = {}
    ceiling_row, per_example["retrain"] = score_pool(logits["retrain_ceiling"], logits["retrain"], split, retain_sample)
    for name, pool in logits.items():
        if name in ("retrain", "retrain_ceiling"):
            continue
        row, per_example[name] = score_pool(pool, logits["retrain"], split, retain_sample)
        _attach(rows, name, {**row, "pool_epoch_s": facts[name].get("epoch_s"), "pool_mode": facts[name].get("mode")},
                ceiling_row["forgetting_quality"])
    _attach(rows, "retrain", {**ceiling_row, "pool_epoch_s": facts["retrain"].get("epoch_s"),
                              "pool_mode": facts["retrain"].get("mode")}, ceiling_row["forgetting_quality"])
    return per_example


def _attach(rows: list[dict[str, Any]], name: str, values: dict[str, Any], ceiling: float) -> None:
    """Put the pool's scores on ``name``'s row at its largest epoch count (not on failed rows)."""
    mine = [r for r in rows if r["paradigm"] == name and r.get("status", "ok") == "ok"]
    if mine:
        last = max(mine, key=lambda r: r["epochs"])
        last.update(values, forgetting_quality_ceiling=ceiling)


def save_per_example(per_example: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """``per_example.npz``: ``<method>/<score>`` arrays (epsilon on D_f; KLoM on D_f, the D_r sample,
    the retained test set; Retrain's are the ceiling pool's)."""
    write_npz(path, {f"{m}/{k}": v for m, scores in per_example.items() for k, v in scores.items()})
