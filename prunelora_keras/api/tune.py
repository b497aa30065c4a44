"""``plk.tune_method``: a seeded hyperparameter search for one method on a user's own model and data, and
``run_study``, the study loop the command (``python -m prunelora_keras.tune``) uses too.

The search draws from the method's declared space (``hparam(search=...)`` beside its
hyperparameters) and ``epochs`` in 1..``max_epochs``; trial 0 is the method's defaults at the
maximum epochs; trial n >= 1 comes from Optuna's TPE sampler seeded with (seed, method, n), so the
same call gives the same trials and a study stored in a journal file continues after a kill as it
would have gone on. Pass *validation* data: a held-out part of your training data, its own D_r and
D_f, and a model retrained on that D_r; then score the chosen hyperparameters once on your test
split (``plk.unlearn(..., **result.best_params)``). Scoring the trials on the split you report would
report the best of N draws on it.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunelora_keras.methods.hparams import Search, search_space

EPOCHS = "epochs"
OBJECTIVES = ("avg_gap", "tow")
WORST = {"avg_gap": 100.0, "tow": 0.0}  # a diverged trial: the largest gap (points), the smallest ToW
DIRECTION = {"avg_gap": "minimize", "tow": "maximize"}


@dataclass
class TuneResult:
    """What ``tune_method`` found: the best trial's hyperparameters (``epochs`` among them) and score,
    every trial in order (``trial``, ``params``, ``value``, ``seconds`` and the trial's metrics).

    Example:
        >>> TuneResult("ga", "avg_gap", {"lr": 1e-3, "epochs": 4}, 2.5).best_params["epochs"]
        4
    """

    method: str
    objective: str
    best_params: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def distributions(space: dict[str, Search]) -> dict[str, Any]:
    """Optuna's distributions of a space (log, float, int, choice)."""
    import optuna

    out = {}
    for key, s in space.items():
        if s.kind == "choice":
            out[key] = optuna.distributions.CategoricalDistribution(list(s.choices))
        elif s.kind == "int":
            out[key] = optuna.distributions.IntDistribution(int(s.low), int(s.high))
        else:
            out[key] = optuna.distributions.FloatDistribution(s.low, s.high, log=s.kind == "log")
    return out


def objective_value(scores: dict[str, Any] | None, objective: str) -> float:
    """A trial's score; the worst value when it has none (training diverged)."""
    value = None if scores is None else scores.get(objective)
    return WORST[objective] if value is None or not np.isfinite(value) else float(value)


def run_study(name: str, space: dict[str, Search], defaults: dict[str, Any],
              run_trial: Callable[[dict[str, Any]], tuple[float, dict[str, Any]]], *, trials: int, objective: str,
              seed: int, storage: str | None = None, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """``trials`` finished trials of the study ``name``: trial 0 = ``defaults`` (those inside the
    space), then TPE seeded with (seed, name, n); ``run_trial(params) -> (value, metrics)``.

    ``storage``: an Optuna journal file: the study resumes from it (a trial that was running when
    the process died is marked failed and drawn again); None: in memory.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        store: Any = JournalStorage(JournalFileBackend(storage))
    else:
        store = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=name, storage=store, direction=DIRECTION[objective], load_if_exists=True)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    dists, start = distributions(space), {k: v for k, v in defaults.items() if k in space and space[k].contains(v)}
    while True:
        n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if n >= trials:
            break
        seed_n = (seed * 1_000_003 + n * 7919 + zlib.crc32(name.encode())) % 2**32
        study = optuna.load_study(study_name=name, storage=store, sampler=optuna.samplers.TPESampler(seed=seed_n))
        if n == 0 and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.enqueue_trial(start)
        trial = study.ask(dists)
        if log:
            # numbered as trials.csv and tune.json number them: trial 0 is the defaults
            log(f"--- {name}: trial {n} ({n + 1} of {trials}{', the defaults' if n == 0 else ''}): "
                f"{json.dumps(trial.params)}")
        begin = time.perf_counter()
        value, metrics = run_trial(dict(trial.params))
        for key, v in {**metrics, "seconds": time.perf_counter() - begin}.items():
            trial.set_user_attr(key, v)
        study.tell(trial, value)
        release_compiled()
        if log:
            log(f"{name}: trial {n}: {objective} {value:.4g} ({time.perf_counter() - begin:.0f} s)")
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[:trials]
    return [{"trial": i, "method": name, "params": t.params, "value": t.value, **t.user_attrs} for i, t in enumerate(done)]


def release_compiled(share: float = 0.5) -> bool:
    """Drop the compiled programs kept so far (the package's cache, JAX's own, then a collection) once
    the process holds more than ``share`` of the memory maps it may hold; returns whether it did.

    A search compiles new steps every trial, and on XLA:CPU each executable keeps its code mapped:
    a long search in one process otherwise ends in "LLVM compilation error: Cannot allocate memory"
    (the map limit, 65,530 here; it happened 60 trials into a ResNet-50 search). Clearing after every
    trial would cost every trial a full recompilation, so it happens only when needed (after every
    trial where ``/proc`` cannot tell).
    """
    import gc

    import jax

    from prunelora_keras.training.caches import clear_caches

    try:
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        if maps < share * limit:
            return False
    except (OSError, ValueError):
        pass
    clear_caches()
    jax.clear_caches()
    gc.collect()
    return True


def best_trial(trials: Sequence[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The best of ``trials`` (the first among equals)."""
    return (min if DIRECTION[objective] == "minimize" else max)(trials, key=lambda t: t["value"])


def method_space(method: str, space: Sequence[str] | None, max_epochs: int) -> dict[str, Search]:
    """The method's declared space (and epochs 1..max_epochs for a method that trains), restricted to
    ``space``; ValueError naming a key the method does not declare."""
    from prunelora_keras.methods import builtin_names

    declared = dict(search_space(builtin_names.hparams_type(method)))
    if builtin_names.trains(method):
        declared[EPOCHS] = Search("int", 1, max_epochs)
    if space is None:
        return declared
    unknown = [k for k in space if k not in declared]
    if unknown:
        raise ValueError(f"{method} declares no search range for {unknown[0]!r}; it declares: {', '.join(declared)}")
    return {k: v for k, v in declared.items() if k in space}


def tune_method(model: Any, retain: Any, forget: Any, test: Any, *, reference: Any, method: str, trials: int = 20,
         max_epochs: int = 10, objective: str = "avg_gap", space: Sequence[str] | None = None, seed: int = 0,
         storage: str | None = None, verbose: bool = True, **options: Any) -> TuneResult:
    """Search ``method``'s hyperparameters on validation data: each trial is ``plk.unlearn`` then
    ``plk.evaluate`` against ``reference``, scored by ``objective``.

    Args:
        model: the trained model to unlearn from (trained on the validation D_r + D_f; not modified).
        retain, forget: the validation D_r and D_f, as ``plk.unlearn`` takes them.
        test: held-out validation data of the retained distribution (TA, the attacks' non-members).
        reference: a model retrained on the validation D_r only (Avg. Gap and ToW are distances to it).
        method: a registered method name.
        trials: finished trials to run (>= 1).
        max_epochs: the epoch budget (epochs are searched in 1..max_epochs).
        objective: "avg_gap" (minimised: UA, MIA-Efficacy, RA, TA against Retrain) or "tow" (maximised).
        space: the keys to search (default: every key the method declares, and epochs).
        seed: the runs' seed and the sampler's.
        storage: a journal file that makes the study resumable (None: in memory).
        verbose: one line per trial on stderr.
        **options: fixed options and hyperparameters for every trial (``batch_size=64``, ...).
    Returns:
        ``TuneResult``; ``plk.unlearn(model, retain, forget, method, **result.best_params)`` re-runs the best.
        (The name is not ``plk.tune``: ``prunelora_keras.tune`` is the command's module.)
    Raises:
        ValueError: an unknown method or objective, trials < 1, a key the method declares no range for.

    Example:
        >>> found = plk.tune_method(original_v, (x_rv, y_rv), (x_fv, y_fv), (x_tv, y_tv), reference=retrained_v,  # doctest: +SKIP
        ...                  method="salun", trials=20)
        >>> final = plk.unlearn(original, (x_r, y_r), (x_f, y_f), "salun", **found.best_params)  # doctest: +SKIP
    """
    from prunelora_keras.api.library import evaluate, unlearn, unlearn_options
    from prunelora_keras.methods import registry

    registry.get(method)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if trials < 1 or max_epochs < 1:
        raise ValueError(f"trials ({trials}) and max_epochs ({max_epochs}) must be >= 1")
    chosen = method_space(method, space, max_epochs)
    _, hparams = unlearn_options(method, **{k: v for k, v in options.items() if k != EPOCHS})  # checked before any work
    defaults = {k: getattr(hparams, k) for k in chosen if k != EPOCHS} | {EPOCHS: max_epochs}

    def run_trial(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        epochs = int(params.pop(EPOCHS, max_epochs))
        try:
            result = unlearn(model, retain, forget, method, epochs=epochs, seed=seed, verbose=False,
                             **{**options, **params})
        except FloatingPointError as exc:
            return WORST[objective], {"status": f"non-finite loss ({exc})"}
        scores = evaluate(result.model, retain, forget, test, reference=reference, seed=seed, relearn_max_steps=0)
        metrics = {k: float(scores[k]) for k in ("UA", "MIA_confidence_svc", "RA", "TA", "avg_gap", "tow")}
        return objective_value(scores, objective), {**metrics, "status": "ok"}

    found = run_study(method, chosen, defaults, run_trial, trials=trials, objective=objective, seed=seed,
                      storage=storage, log=(lambda m: print(m, file=sys.stderr, flush=True)) if verbose else None)
    best = best_trial(found, objective)
    return TuneResult(method, objective, dict(best["params"]), float(best["value"]), found)
