"""Several seeds, one table: mean and standard deviation of every metric per paradigm and epoch.

``--seeds 0,1,2`` runs the whole experiment once per seed (data subsample, original model, Retrain,
every paradigm, MIA draws: all seeded) into ``<out>/seed<N>/``, then this module folds the runs
into ``<out>/results.json`` (rows with ``<metric>`` the mean and ``<metric>_std`` the population
standard deviation over the seeds that finished, and ``n_seeds``), the CSV, the table
(``mean ± std``) and the plots (error bars). A paradigm that failed in every seed stays failed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SPREAD_KEYS = ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA", "avg_gap", "rte_s", "sparsity",
               "peak_mem_bytes", "tow", "MIA_entropy_svc", "MIA_m_entropy_svc", "probe_forget_acc",
               "probe_forget_acc_test", "cka_forget", "cka_retain", "relearn_steps",
               # --eval-models K (many_models.py): each seed's pools scored on their own, then folded
               "forgetting_quality", "forgetting_quality_ceiling", "forget_score", "epsilon_median",
               "spread_ratio_forget", "klom_forget", "klom_retain", "klom_test", "pool_UA", "pool_RA", "pool_TA",
               # --eval-ulira S (ulira_run.py): each seed's shadows attacked on their own, then folded
               "ulira_acc", "ulira_acc_lo", "ulira_acc_hi", "ulira_tpr_at_0.01", "ulira_tpr_at_0.001",
               "ulira_acc_retain", "ulira_acc_original", "ulira_acc_floor", "ulira_acc_retain_original")
# true in a folded row when true in any of its runs (a dagger in the table)
ANY_KEYS = ("attack_degenerate_loss_logreg", "attack_degenerate_confidence_svc", "attack_degenerate_entropy_svc",
            "attack_degenerate_m_entropy_svc", "relearn_capped")
# the fraction of runs in which it was true
FRACTION_KEYS = ("forget_row_pruned",)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; raises ValueError on anything else (run.py turns it into one line)."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(text)
    return seeds


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dictionary from per-seed results dictionaries (same configuration but the seed)."""
    first = runs[0]
    def row_key(r):  # continual unlearning: one row per request too
        return r["paradigm"], r["epochs"], r.get("request")

    keys = list(dict.fromkeys(row_key(r) for run in runs for r in run["rows"]))
    rows = []
    for paradigm, epochs, request in keys:
        found = [r for run in runs for r in run["rows"] if row_key(r) == (paradigm, epochs, request)]
        ok = [r for r in found if r.get("status", "ok") == "ok"]
        where = {} if request is None else {"request": request, "forgotten": found[0].get("forgotten")}
        if not ok:
            rows.append({"paradigm": paradigm, "epochs": epochs, **where, "status": found[0].get("status", "failed"),
                         "n_seeds": 0})
            continue
        row = {"paradigm": paradigm, "epochs": epochs, **where, "n_seeds": len(ok),
               "status": "ok" if len(ok) == len(found) else f"ok in {len(ok)} of {len(found)} seeds",
               "trainable_params": ok[0].get("trainable_params"), "mem_kind": ok[0].get("mem_kind"),
               "compile_s": float(np.mean([r.get("compile_s", np.nan) for r in ok])),
               **{k: ok[0][k] for k in ("eval_models", "ulira_shadows") if k in ok[0]}}
        for key in SPREAD_KEYS:
            values = [r[key] for r in ok if r.get(key) is not None and np.isfinite(r[key])]
            if values:
                row[key] = float(np.mean(values))
                row[f"{key}_std"] = float(np.std(values))
        for key in ANY_KEYS:
            if any(key in r for r in ok):
                row[key] = any(bool(r.get(key)) for r in ok)
        for key in FRACTION_KEYS:
            values = [bool(r[key]) for r in ok if r.get(key) is not None]
            if values:
                row[key] = float(np.mean(values))
        if "pruned_units" in ok[0]:  # a pruning method (the report's sparsity note); the counts follow prune_amount
            row["pruned_units"] = ok[0]["pruned_units"]
        rows.append(row)
    original = {}
    for key in ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA", "train_acc", "test_acc",
                "attack_acc_loss_logreg", "attack_acc_confidence_svc", "probe_forget_acc", "probe_forget_acc_test"):
        values = [run["original"][key] for run in runs if key in run.get("original", {})]
        if values:
            original[key], original[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    config = dict(first["config"])
    config["seed"] = [run["seed"] for run in runs]
    return {"config": config, "seeds": [run["seed"] for run in runs], "device": first.get("device"),
            "versions": first.get("versions"), "data": first.get("data"), "original": original, "rows": rows,
            "per_seed": [{"seed": run["seed"], "rows": run["rows"], "wall_s": run.get("wall_s")} for run in runs],
            "wall_s": float(sum(run.get("wall_s", 0.0) for run in runs))}
