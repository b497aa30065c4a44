"""The hyperparameter search: one seeded Optuna study per method under one budget, scored on a
validation split, the chosen hyperparameters scored once on the untouched split.

Why a validation split. A search that scores trials on the split it reports peeks at the answer:
the best of 20 draws on the test set is biased upwards. So the training data of the run is cut in
two (``validation_split``): a stratified ``--validation-fraction`` (0.2) is held out as the
validation *test* set, and the rest is the validation *training* set with its own D_r and D_f (the
same forget class, or the same fraction drawn anew). An original and a Retrain are trained there
once (``<out>/validation/checkpoints``), and every trial unlearns that original and is scored
against that Retrain. The test set of the run is never touched until the end: then the chosen
hyperparameters (and, for comparison, the defaults) run once each as a normal run on the real
split, into ``<out>/final/<method>/`` and ``<method>-default/``.

The objective (``--objective``): ``avg_gap`` (default), the mean absolute difference from Retrain
over UA, MIA-Efficacy, RA and TA in points, minimised: the measure every table of the package ranks
methods by, and the only one of the two that looks at a membership attack; ``tow``, Tug of War
(Zhao et al. 2024) over UA, RA and TA, maximised. A trial whose training diverges scores the worst
possible value (100 points; ToW 0).

Determinism. Trial 0 is the method's defaults at the maximum epochs (Optuna's ``enqueue_trial``:
the search starts from the published recipe, so tuning can only improve the validation score);
trial n >= 1 is drawn by a TPE sampler seeded with (seed, method, n) from the history of the
finished trials, so the same command gives the same trials and the same best, and a search killed
and started again continues exactly as it would have (the journal file ``study.journal`` holds the
studies; a trial that was running when killed is marked failed and drawn again; the unlearning
runs themselves resume from their epoch-end state in ``<out>/validation``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from prunelora_keras.data.datasets import Subset, UnlearningSplit, random_forget_mask, stratified_indices
from prunelora_keras.errors import UserError
from prunelora_keras.experiment.config import Config, build_config
from prunelora_keras.api.tune import EPOCHS, best_trial, objective_value, run_study
from prunelora_keras.experiment.tune_args import TuneRequest, describe
from prunelora_keras.methods.hparams import Search, check_hparams



def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def validation_split(split: UnlearningSplit, fraction: float, seed: int, forget_fraction: float) -> UnlearningSplit:
    """The search's split, carved from ``split.train`` only: a stratified ``fraction`` held out as its
    test set, the rest its training set with D_r and D_f as the run defines them (the forget
    classes, or a seeded ``forget_fraction`` of it). ``split.test`` is not used."""
    y = split.train.y
    held = np.zeros(len(y), bool)
    held[stratified_indices(y, int(round(fraction * len(y))), seed + 2, "--validation-fraction")] = True
    x_tr, y_tr, x_te, y_te = split.train.x[~held], y[~held], split.train.x[held], y[held]
    if forget_fraction:
        f_tr, f_te = random_forget_mask(y_tr, forget_fraction, seed), np.zeros(len(y_te), bool)
    else:
        f_tr, f_te = np.isin(y_tr, split.forget_classes), np.isin(y_te, split.forget_classes)
    out = UnlearningSplit(retain=Subset(x_tr[~f_tr], y_tr[~f_tr]), forget=Subset(x_tr[f_tr], y_tr[f_tr]),
                          test_retain=Subset(x_te[~f_te], y_te[~f_te]), test_forget=Subset(x_te[f_te], y_te[f_te]),
                          train=Subset(x_tr, y_tr), test=Subset(x_te, y_te), forget_class=split.forget_class,
                          forget_classes=split.forget_classes)
    for name in ("retain", "forget", "test_retain"):
        if len(getattr(out, name)) == 0:
            raise UserError(f"the validation split's {name} set is empty: use a larger --validation-fraction or "
                            "data.train_size")
    return out


def trial_config(cfg: Config, method: str, params: dict[str, Any], max_epochs: int) -> Config:
    """``cfg`` running Retrain and ``method`` with ``params`` (its hyperparameters and ``epochs``)."""
    values = dataclasses.asdict(cfg.methods[method])
    values.update({k: v for k, v in params.items() if k != EPOCHS})
    hparams = check_hparams(type(cfg.methods[method]), values, f"{method}.")
    unlearn = dataclasses.replace(cfg.unlearn, paradigms=["retrain", method],
                                  epochs=[int(params.get(EPOCHS, max_epochs))])
    return dataclasses.replace(cfg, unlearn=unlearn, methods={**cfg.methods, method: hparams})


def default_params(cfg: Config, method: str, space: dict[str, Search], max_epochs: int) -> dict[str, Any]:
    """Trial 0: the configuration's values of the searched keys (the published defaults, or the
    preset's), the maximum epochs; only those inside the space (Optuna would refuse the others)."""
    out = {k: getattr(cfg.methods[method], k) for k in space if k != EPOCHS}
    if EPOCHS in space:
        out[EPOCHS] = max_epochs
    return {k: v for k, v in out.items() if space[k].contains(v)}


class TuneSession:
    """The data, the validation models and the folders every study of one command shares."""

    def __init__(self, req: TuneRequest):
        from prunelora_keras.experiment import pipeline
        from prunelora_keras.experiment.stages import data_identity, train_stage

        self.req, self.out = req, Path(req.out)
        self.ds, self.split = pipeline.load_data(req.cfg)
        self.vsplit = validation_split(self.split, req.validation_fraction, req.cfg.seed, req.cfg.data.forget_fraction)
        self.vdir = self.out / "validation"
        # the validation trials skip relearning (it scores nothing the objective reads); the final runs do not
        self.vcfg = dataclasses.replace(req.cfg, eval=dataclasses.replace(req.cfg.eval, relearn_max_steps=0))
        self.data_id = json.dumps({"data": data_identity(req.cfg), "validation": req.validation_fraction})
        self.distribution = pipeline.make_distribution(req.cfg)
        log(f"validation split: train {len(self.vsplit.train)} (retain {len(self.vsplit.retain)}, forget "
            f"{len(self.vsplit.forget)}), test {len(self.vsplit.test)}; the run's test set ({len(self.split.test)}) is "
            "kept for the final runs")
        start = time.perf_counter()
        _, original = train_stage("original", self.vcfg, self.vcfg.pretrain, self.vsplit.train, self.ds, self.vsplit,
                                  self.vdir, self.data_id, self.distribution)
        self.original_ckpt, self.shared_s = original.checkpoint, time.perf_counter() - start

    def run_trial(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any] | None, float]:
        """Unlearn the validation original with ``params``; (the method's row, seconds)."""
        from prunelora_keras.experiment.pipeline import unlearn_round

        cfg = trial_config(self.vcfg, method, params, self.req.max_epochs)
        start = time.perf_counter()
        rows, _, _ = unlearn_round(cfg, self.vsplit, self.ds, {}, self.original_ckpt, self.vdir, self.data_id,
                                   self.distribution, [])
        mine = [r for r in rows if r["paradigm"] == method and r["epochs"] == cfg.unlearn.epochs[0]]
        return (mine[0] if mine else None), time.perf_counter() - start

    def study(self, method: str) -> list[dict[str, Any]]:
        """Run ``method``'s study to ``req.trials`` finished trials (``api.tune.run_study``); returns them."""
        req = self.req

        def run_trial(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            row, _ = self.run_trial(method, params)
            ok = row is not None and row.get("status") == "ok"
            metrics = {k: None if row is None else row.get(k)
                       for k in ("UA", "MIA_confidence_svc", "RA", "TA", "avg_gap", "tow", "status")}
            return objective_value(row if ok else None, req.objective), metrics

        return run_study(method, req.spaces[method], default_params(req.cfg, method, req.spaces[method], req.max_epochs),
                         run_trial, trials=req.trials, objective=req.objective, seed=req.cfg.seed,
                         storage=str(self.out / "study.journal"), log=log)

    def final_run(self, method: str, cfg: Config, name: str) -> dict[str, Any]:
        """``cfg`` as a normal run on the real split into ``<out>/final/<name>``; the method's row."""
        from prunelora_keras.experiment import pipeline

        folder = self.out / "final" / name
        share_retrain(self.out / "final", folder)
        results = pipeline.run_pipeline(cfg, folder, self.ds, self.split, self.out / "final" / "checkpoints")
        rows = [r for r in results["rows"] if r["paradigm"] == method and r["epochs"] == cfg.unlearn.epochs[0]]
        return {**rows[0], "folder": str(folder), "wall_s": results["wall_s"]}


def share_retrain(final_dir: Path, folder: Path) -> None:
    """Hard-link the finished Retrain checkpoints of the other final runs into ``folder`` (the key in
    the name says whether one is this run's: the same data, model and recipe train the same Retrain)."""
    ckpts = folder / "checkpoints"
    for path in sorted(final_dir.glob("*/checkpoints/retrain-*.keras")):
        target = ckpts / path.name
        if path.parent != ckpts and not target.exists():
            ckpts.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                return


def write_best(req: TuneRequest, method: str, params: dict[str, Any]) -> tuple[Path, Config]:
    """``best-<method>.toml`` and the configuration the run command builds from it (checked to be the
    tuned one: the file reproduces the tuned run exactly)."""
    from prunelora_keras.experiment.tune_report import best_toml

    path = Path(req.out) / f"best-{method}.toml"
    path.write_text(best_toml(req, method, params))
    cfg = build_config(req.model, req.preset, str(path))
    want = trial_config(req.cfg, method, params, req.max_epochs)
    if cfg.to_dict() != want.to_dict():
        raise RuntimeError(f"{path} does not reproduce the tuned configuration; please report this")
    return path, cfg


def check_folder(req: TuneRequest) -> None:
    """A search folder holds one request: a re-run with other settings is refused, not mixed in."""
    out = Path(req.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    saved = out / "tune.json"
    if saved.is_file():
        old = json.loads(saved.read_text()).get("settings", {})
        mine = json.loads(json.dumps(describe(req)))  # as tune.json holds it: tuples as lists
        keep = ("model", "preset", "objective", "validation_fraction", "config", "max_epochs")
        diff = [k for k in keep if old.get(k) != mine.get(k)]
        if diff:
            raise UserError(f"{out} holds a search with another {diff[0]}: choose another --out (or delete it)")
        # a method searched before keeps its space: trials drawn from two spaces would share one study
        for method, space in mine["spaces"].items():
            before = old.get("spaces", {}).get(method)
            if before is not None and before != space:
                raise UserError(f"{out} holds a search of {method} over another space ({', '.join(before) or 'none'}; "
                                f"now {', '.join(space)}): pass the same --space, or choose another --out")


def run(req: TuneRequest) -> dict[str, Any]:
    """Every study, the final runs and the outputs; returns tune.json's content."""
    from prunelora_keras.experiment.tune_report import write_outputs

    check_folder(req)
    Path(req.out).mkdir(parents=True, exist_ok=True)
    search = TuneSession(req)
    methods = {}
    for method in req.methods:
        trials = search.study(method)
        best = best_trial(trials, req.objective)
        path, cfg_best = write_best(req, method, best["params"])
        default = trial_config(req.cfg, method, default_params(req.cfg, method, req.spaces[method], req.max_epochs),
                               req.max_epochs)
        tuned = search.final_run(method, cfg_best, method)
        methods[method] = {"best": best, "toml": str(path), "trials": trials,
                           "tuning_s": float(sum(t["seconds"] for t in trials)), "tuned": tuned,
                           "default": tuned if default.to_dict() == cfg_best.to_dict() else  # the defaults won
                           search.final_run(method, default, f"{method}-default")}
        write_outputs(req, methods, search.shared_s)
    return write_outputs(req, methods, search.shared_s)


def main(argv: list[str] | None = None) -> int:
    from prunelora_keras.experiment.tune_args import request

    try:
        req = request(argv)
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("the search needs Optuna: pip install 'prunelora-keras[tune]' (or pip install optuna)") \
                from None
        result = run(req)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the search (finished trials are kept)",
              file=sys.stderr)
        return 130
    from prunelora_keras.experiment.tune_report import summary

    print(summary(result))
    return 0
