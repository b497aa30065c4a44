"""The experiment: data -> original model -> Retrain -> each method -> evaluation -> run folder.

Written on the library: the original and Retrain are trained by ``stages.train_stage``; every
method, whatever it is, is prepared by ``unlearning.prepare_method`` (the registry's entry and the
one training loop, as ``api.unlearn`` does) and scored by ``evaluation.evaluate_model``. What is
the experiment's own: reuse and resume of finished work (keys derived from everything that
determines a result), evaluation at every requested epoch column, continual requests and the
report. No method has a branch here.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jax
import keras
import numpy as np

from prunelora_keras import __version__
from prunelora_keras.api.checks import chance_warnings
from prunelora_keras.training.checkpoint import read_meta, remove_file, save_model
from prunelora_keras.experiment.config import Config
from prunelora_keras.data.datasets import Dataset, UnlearningSplit, make_split
from prunelora_keras.data.sources import load_dataset
from prunelora_keras.parallel.distributed import check_batch_size, data_parallel, device_count
from prunelora_keras.errors import TrainingFailed, UserError
from prunelora_keras.models.lora import count_params, matches_any
from prunelora_keras.evaluation.evaluate import Reference
from prunelora_keras.experiment.context import evaluate_model, make_reference
from prunelora_keras.experiment.eval_cache import cached_evaluation
from prunelora_keras.evaluation.metrics import add_avg_gap
from prunelora_keras.parallel.multihost import agree
from prunelora_keras.experiment.paradigms import prune_targets
from prunelora_keras.models.precision import evaluation_model
from prunelora_keras.training.inference import evaluation_devices
from prunelora_keras.models.pruning import sparsity_report
from prunelora_keras.experiment.report import accuracy_table, evaluation_table, paper_table, write_report  # noqa: F401
from prunelora_keras.experiment.terminal import Pace, closing_lines, fit_width  # noqa: F401
from prunelora_keras.experiment.stages import (StageResult, data_identity, forget_description, load_finished, paradigm_key,
                                               resume, save_epoch, save_finished, train_stage)
from prunelora_keras.training.loop import EpochStats, peak_memory
from prunelora_keras.training.trainers import on_jax  # noqa: F401
from prunelora_keras.experiment.context import prepare_paradigm  # noqa: F401
from prunelora_keras.models.lora import with_fast_layers  # noqa: F401
from prunelora_keras.training.progress import count


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def device_description() -> str:
    dev = jax.local_devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    if dev.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()}){processes}"
    return f"{dev.platform}: {kind} x{jax.local_device_count()}{processes}"


def versions() -> dict[str, str]:
    import optax

    return {"prunelora_keras": __version__, "keras": keras.__version__, "jax": jax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version()}


def has_accelerator() -> bool:
    return any(d.platform != "cpu" for d in jax.devices())


def load_data(cfg: Config, ds: Dataset | None = None) -> tuple[Dataset, UnlearningSplit]:
    """The data set (loaded unless given) and the unlearning split ``cfg`` asks for."""
    if ds is None:
        ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, labels=cfg.data.labels, image_size=cfg.data.image_size)
    split = make_split(ds, cfg.data.forget_class, cfg.data.train_size, cfg.data.test_size, cfg.seed,
                       cfg.data.forget_fraction)
    if cfg.data.forget_classes:  # continual: every request must be valid before anything trains
        make_split(ds, cfg.data.forget_classes, cfg.data.train_size, cfg.data.test_size, cfg.seed)
    if cfg.model.name == "vit":
        h, w = ds.image_shape[:2]
        if h % cfg.model.patch_size or w % cfg.model.patch_size:
            raise UserError(f"model.patch_size {cfg.model.patch_size} does not divide the {h}x{w} images of "
                            f"{ds.name}: choose a divisor, e.g. --set model.patch_size=2")
    return ds, split


def _sparsity_pct(model: keras.Model, cfg: Config) -> float:
    targets = prune_targets(cfg.model, cfg.unlearn)
    names = [layer.name for layer in model.layers if matches_any(layer.name, targets)]
    return 100.0 * sparsity_report(model, names)["overall"]["zero_weights"]


def _mean_seconds(history: list[EpochStats], upto: int) -> float:
    seconds = [h.seconds for h in history[:upto]]
    return float(np.mean(seconds)) if seconds else float("nan")


def run_paradigm(name: str, cfg: Config, original_ckpt: str, ds: Dataset, split: UnlearningSplit,
                 out_dir: Path | None = None, distribution: Any = None, save_to: Path | None = None,
                 reference: Reference | None = None) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """Train one paradigm for max(epochs) epochs on D_r, evaluating at every requested epoch count.

    ``reference``: Retrain's features and the relearning plan every row is measured against (the
    relearn test runs at the largest epoch count only: the report shows it there, and its fine-tune
    would otherwise cost more than the rest of every evaluation).

    With ``out_dir``, the paradigm's epoch-end state goes to ``checkpoints/<name>-<key>.state.npz``
    (a re-run resumes from it) and its finished rows to ``paradigms/<name>-<key>.json`` (a re-run
    reuses them). Non-finite training loss ends the paradigm with failed rows; others still run.
    """
    u = cfg.unlearn
    key = paradigm_key(name, cfg, original_ckpt)
    done = out_dir / "paradigms" / f"{name}-{key}.json" if out_dir is not None else None
    state_path = out_dir / "checkpoints" / f"{name}-{key}.state.npz" if out_dir is not None else None
    if done is not None and agree(done.is_file() and (save_to is None or save_to.is_file())):  # every process alike
        log(f"{name}: reusing finished results {done}")
        return load_finished(done)
    prepare_start = time.perf_counter()
    prep = prepare_paradigm(name, cfg, original_ckpt, ds, split, distribution)
    prepare_s = time.perf_counter() - prepare_start  # SSD's importance passes, SalUn's saliency, MSG's gradients
    recipe, trainer, diagnostics, cache_facts = prep.plan, prep.trainer, prep.diagnostics, prep.cache_facts
    total = max(u.epochs)
    if not prep.resumable:
        state_path = None  # Keras's fit is not resumable mid-paradigm; finished paradigms still are reused
    rows: list[dict[str, Any]] = []
    history: list[EpochStats] = []
    last_losses: dict[str, np.ndarray] | None = None
    first = 1
    if state_path is not None:
        first = resume(trainer, state_path, name, history)
        if first > 1:
            rows = list(read_meta(state_path)["rows"])

    def on_epoch_end(stats: EpochStats) -> None:
        nonlocal last_losses
        history.append(stats)
        if stats.epoch in u.epochs:
            eval_model = evaluation_model(recipe.eval_model())
            # the relearn test (a 200-step fine-tune: most of an evaluation's time) at the largest count only
            last = stats.epoch == total or reference is None
            evaluation = evaluate_model(eval_model, split, ds, cfg, reference if last else reference.without_relearn(),
                                        label=f"{name} @ {count(stats.epoch, 'epoch')}")
            metrics, last_losses = evaluation.metrics, evaluation.losses
            rows.append({"paradigm": name, "epochs": stats.epoch, **metrics, **diagnostics,
                         "rte_s": _mean_seconds(history, stats.epoch),
                         "rte_median_s": float(np.median([h.seconds for h in history])),
                         "compile_s": history[0].compile_s, "prepare_s": prepare_s,
                         "peak_mem_bytes": stats.peak_mem_bytes, "mem_kind": stats.mem_kind,
                         "trainable_params": recipe.trainable_params, "sparsity": _sparsity_pct(eval_model, cfg),
                         **cache_facts, "precision": u.precision, "status": "ok"})
            log(f"{name} @ {count(stats.epoch, 'epoch')}: UA {metrics['UA']:.2f} MIA(loss) {metrics['MIA_loss_logreg']:.2f} "
                f"MIA(conf) {metrics['MIA_confidence_svc']:.2f} RA {metrics['RA']:.2f} TA {metrics['TA']:.2f}")
        if state_path is not None:
            save_epoch(state_path, trainer, name, history, rows=rows)

    try:
        if first <= total:
            trainer.fit(prep.x, prep.y, total - first + 1, u.batch_size, cfg.data.drop_last, on_epoch_end,
                        first_epoch=first, **prep.fit_kwargs)
    except FloatingPointError as exc:
        log(f"{name}: stopped: {exc}")
        done_epochs = {r["epochs"] for r in rows}
        rows += [{"paradigm": name, "epochs": e, "status": f"non-finite loss ({exc})"}
                 for e in u.epochs if e not in done_epochs]
    if last_losses is None and first > total:  # killed after the last epoch's state, before the results
        eval_model = evaluation_model(recipe.eval_model())
        last_losses = evaluate_model(eval_model, split, ds, cfg).losses
    if save_to is not None:  # the unlearned model, the start of the next request (continual unlearning)
        save_model(evaluation_model(recipe.eval_model()), save_to)
    if done is not None:
        save_finished(done, rows, last_losses)
        if state_path is not None:
            remove_file(state_path)
    return rows, last_losses


def make_distribution(cfg: Config) -> Any:
    """The data-parallel distribution ``cfg.devices`` asks for (None: one device), with the global
    batch sizes checked to split evenly over its devices."""
    if not on_jax():
        if cfg.devices > 1:
            raise UserError(f"--devices {cfg.devices}: data-parallel training runs on the jax backend only; "
                            f"unset KERAS_BACKEND (now {keras.backend.backend()}) or pass --devices 1")
        return None
    if jax.process_count() > 1 and cfg.devices not in (0, jax.device_count()):
        raise UserError(f"--devices {cfg.devices}: a multi-process job trains on every process's devices; pass "
                        f"--devices 0 (all {jax.device_count()}) or run fewer processes")
    distribution = data_parallel(cfg.devices)
    if distribution is not None:
        check_batch_size(cfg.data.batch_size, distribution, "data.batch_size")
        check_batch_size(cfg.unlearn.batch_size, distribution, "unlearn.batch_size")
        log(f"data-parallel over {device_count(distribution)} devices: each global batch is split evenly; an epoch's "
            "last, smaller batch is computed whole on every device when it does not split")
    return distribution


def unlearn_round(cfg: Config, split: UnlearningSplit, ds: Dataset, starts: dict[str, str], original_ckpt: str,
                  out_dir: Path, data_id: str, distribution: Any, stages: list[StageResult],
                  save_dir: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], dict]:
    """Retrain and every paradigm for one forget request. ``starts``: each paradigm's start model
    (default the original). With ``save_dir``, each unlearned model is saved there; returns (rows,
    Figure-2 losses, {paradigm: saved model path})."""
    rows: list[dict[str, Any]] = []
    losses: dict[str, dict[str, np.ndarray]] = {}
    retrain_model = None
    original = keras.saving.load_model(original_ckpt, compile=False, safe_mode=True)
    reference = make_reference(original, split, ds, cfg)  # the relearning plan and target of this request
    del original
    if "retrain" in cfg.unlearn.paradigms:
        try:
            retrain_model, retrain = train_stage("retrain", cfg, cfg.retrain, split.retain, ds, split, out_dir, data_id,
                                                 distribution)
        except FloatingPointError as exc:
            log(f"retrain: stopped: {exc}")
            rows += [{"paradigm": "retrain", "epochs": e, "status": f"non-finite loss ({exc})"}
                     for e in sorted(cfg.unlearn.epochs)]
    if retrain_model is not None:
        stages.append(retrain)
        evaluation = cached_evaluation(retrain_model, retrain.checkpoint, split, ds, cfg, reference, label="retrain")
        metrics, losses["retrain"] = evaluation.metrics, evaluation.losses
        reference.retrain_features = {k: evaluation.features[k] for k in ("forget", "test_retain")}
        reference.retrain_logits = {k: evaluation.logits[k] for k in ("forget", "test_retain", "test_forget")
                                    if k in evaluation.logits}  # RMIA's reference model
        metrics.update(cka_forget=1.0, cka_retain=1.0)  # Retrain against itself
        hist = [EpochStats(**h) for h in retrain.history]
        mem, kind = peak_memory()
        for e in sorted(cfg.unlearn.epochs):  # one model, the same values in every epoch column
            rows.append({"paradigm": "retrain", "epochs": e, **metrics, "rte_s": _mean_seconds(hist, len(hist)),
                         "compile_s": hist[0].compile_s if hist else float("nan"), "prepare_s": 0.0, "peak_mem_bytes": mem,
                         "mem_kind": kind, "trainable_params": count_params(retrain_model.trainable_variables),
                         "sparsity": _sparsity_pct(retrain_model, cfg), "status": "ok"})
    saved: dict[str, str] = {}
    pace = Pace([n for n in cfg.unlearn.paradigms if n != "retrain"])
    for name in cfg.unlearn.paradigms:
        if name == "retrain":
            continue
        pace.next(name, log)
        save_to = save_dir / f"{name}.keras" if save_dir is not None else None
        paradigm_rows, paradigm_losses = run_paradigm(name, cfg, starts.get(name, original_ckpt), ds, split, out_dir,
                                                      distribution, save_to, reference)
        if save_to is not None:
            saved[name] = str(save_to)
        rows += paradigm_rows
        if paradigm_losses is not None:
            losses[name] = paradigm_losses
    add_avg_gap(rows)
    return rows, losses, saved


def unlearn_continually(cfg: Config, ds: Dataset, original: StageResult, out_dir: Path, data_id: str,
                        distribution: Any, stages: list[StageResult]
                        ) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], list[dict[str, Any]]]:
    """Continual unlearning: the forget requests of ``cfg.data.forget_classes`` one after another.

    Request k forgets classes[:k] in all: each paradigm starts from its own model after request
    k-1 (the first from the original), Retrain trains from scratch without all of them, and the
    metrics (UA and MIA on every class forgotten so far, RA on the rest) are taken after each
    request. Rows carry ``request`` and ``forgotten``; each request's own table is in
    ``request<k>/results.md``.
    """
    sequence = list(cfg.data.forget_classes)
    all_rows: list[dict[str, Any]] = []
    requests = []
    starts: dict[str, str] = {}
    losses: dict[str, dict[str, np.ndarray]] = {}
    for k in range(1, len(sequence) + 1):
        cfg_k = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, forget_class=sequence[k - 1],
                                                                  forget_classes=sequence[:k]))
        split_k = make_split(ds, sequence[:k], cfg.data.train_size, cfg.data.test_size, cfg.seed)
        log(f"--- request {k} of {len(sequence)}: forget {forget_description(split_k, ds)} "
            f"(retain {len(split_k.retain)}, forget {len(split_k.forget)}) ---")
        request_stages: list[StageResult] = []
        rows, losses, saved = unlearn_round(cfg_k, split_k, ds, starts, original.checkpoint, out_dir, data_id,
                                            distribution, request_stages, out_dir / "continual" / f"request{k}")
        for stage in request_stages:
            stage.name = f"{stage.name}_request{k}"
        stages += request_stages
        starts = saved
        for r in rows:
            r.update(request=k, forgotten=sequence[:k])
        all_rows += rows
        requests.append({"request": k, "forgotten": sequence[:k], "rows": rows})
        write_report({"config": cfg_k.to_dict(), "rows": rows, "original": {}}, out_dir / f"request{k}", losses)
    return all_rows, losses, requests


def run_pipeline(cfg: Config, out_dir: Path, ds: Dataset | None = None,
                 split: UnlearningSplit | None = None, original_dir: Path | None = None) -> dict[str, Any]:
    """Run the whole experiment for ``cfg`` into ``out_dir``; returns the results dictionary.

    ``original_dir``: where the original model's checkpoint lives (default ``out_dir/checkpoints``);
    the per-class runs of ``--forget-each`` share one there.
    """
    start = time.perf_counter()
    if ds is None or split is None:
        ds, split = load_data(cfg)
    log(f"data: {ds.name}, train {len(split.train)} (retain {len(split.retain)}, forget {len(split.forget)}: "
        f"{forget_description(split, ds)}), test {len(split.test)}, images {ds.image_shape}")
    data_id = data_identity(cfg)
    distribution = make_distribution(cfg)
    with evaluation_devices(distribution):  # evaluation passes data-parallel too, over every process's devices
        return _run_pipeline(cfg, out_dir, ds, split, original_dir, data_id, distribution, start)


def _run_pipeline(cfg: Config, out_dir: Path, ds: Dataset, split: UnlearningSplit, original_dir: Path | None,
                  data_id: str, distribution: Any, start: float) -> dict[str, Any]:
    if cfg.eval.models:
        from prunelora_keras.experiment.many_models import check_pools

        check_pools(cfg, ds, distribution)
    if cfg.eval.ulira:
        from prunelora_keras.experiment.ulira_run import check_ulira

        check_ulira(cfg, ds, distribution)
    try:
        original_model, original = train_stage("original", cfg, cfg.pretrain, split.train, ds, split, out_dir, data_id,
                                               distribution, original_dir)
    except FloatingPointError as exc:  # nothing can be unlearned from a model that did not train
        raise TrainingFailed(f"{exc}; nothing else can run. Lower pretrain.lr or set pretrain.clip_norm, "
                             "then run the same command again") from None
    original_metrics = cached_evaluation(original_model, original.checkpoint, split, ds, cfg, label="original").metrics
    tta = f" ({original.accuracies['test_tta']:.2f}% with TTA)" if "test_tta" in original.accuracies else ""
    log(f"original: train {original.accuracies['train']:.2f}% test {original.accuracies['test']:.2f}%{tta}")
    stages = [original]
    if cfg.data.forget_classes:
        rows, losses, requests = unlearn_continually(cfg, ds, original, out_dir, data_id, distribution, stages)
    else:
        rows, losses, _ = unlearn_round(cfg, split, ds, {}, original.checkpoint, out_dir, data_id, distribution, stages)
        requests = None
        if cfg.eval.models:
            from prunelora_keras.experiment import many_models, pool_report

            per_example = many_models.run_pools(cfg, ds, split, original.checkpoint, out_dir, data_id, rows,
                                                distribution)
            many_models.save_per_example(per_example, out_dir / "per_example.npz")
            pool_report.plot_forgetting_quality(per_example, out_dir / "forgetting_quality.png",
                                                f"{cfg.model.name}: per-example scores, K = {cfg.eval.models}")
        if cfg.eval.ulira:
            from prunelora_keras.experiment.ulira_run import run_ulira

            run_ulira(cfg, ds, split, original.checkpoint, out_dir, data_id, rows, distribution)
    results = {
        "warnings": chance_warnings(retain_accuracies(original_metrics, rows), split.retain.y),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "device": device_description(),
        "devices": device_count(distribution),
        "processes": jax.process_count(),
        "versions": versions(),
        "data": {"dataset": ds.name, "train": len(split.train), "test": len(split.test), "retain": len(split.retain),
                 "forget": len(split.forget), "test_retain": len(split.test_retain),
                 "forget_class": split.forget_class, "forgetting": forget_description(split, ds),
                 "class_name": ds.class_names[split.forget_class] if split.forget_class >= 0 else None},
        "original": {**original_metrics, "train_acc": original.accuracies["train"], "test_acc": original.accuracies["test"],
                     **({"test_acc_tta": original.accuracies["test_tta"]} if "test_tta" in original.accuracies else {})},
        "rows": rows,
        "stages": {r.name: asdict(r) for r in stages},
        **({"requests": requests} if requests is not None else {}),
        "wall_s": time.perf_counter() - start,
    }
    write_report(results, out_dir, losses)
    return results


def retain_accuracies(original_metrics: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """{model: RA} for the chance check: the original, and each method at its largest epoch count
    (rows that failed have no RA)."""
    out = {"original": float(original_metrics["RA"])}
    for r in sorted((r for r in rows if "RA" in r), key=lambda r: r["epochs"]):
        out[r["paradigm"]] = float(r["RA"])
    return out


def summary(results: dict[str, Any]) -> str:
    """What the command prints at the end: stage accuracies, the paper's table, the evaluation beyond
    it, then in words what was forgotten and which method came closest to Retrain."""
    from prunelora_keras.experiment.pool_report import pool_table, ulira_table

    extra, pools, attack = evaluation_table(results), pool_table(results), ulira_table(results)
    return fit_width("Accuracy (%) of the trained models:\n" + accuracy_table(results) + "\n\n" + paper_table(results)
                     + (f"\n\nEvaluation beyond the paper (largest epoch count):\n{extra}" if extra else "")
                     + (f"\n\nMany-model evaluation (largest epoch count):\n{pools}" if pools else "")
                     + (f"\n\nU-LiRA (largest epoch count):\n{attack}" if attack else "")
                     + "\n\n" + closing_lines(results)
                     + "".join(f"\nwarning: {line}" for line in results.get("warnings", [])))
