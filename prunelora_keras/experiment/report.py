"""The run folder's outputs: results.json, results.csv, results.md (the paper's table) and plots.

Rows are keyed exactly ``paradigm, epochs, UA, MIA_loss_logreg, MIA_confidence_svc, RA, TA,
rte_s, compile_s, peak_mem_bytes, mem_kind, trainable_params, sparsity`` (metrics in percent,
``sparsity`` = percent of zero weights in the pruning targets), then the attacks' own accuracies,
the summary scores, the extra attacks, the representation metrics, relearn time and the pruning
diagnostics (``ROW_KEYS``). ``results.md`` holds the paper's table and, below it, the evaluation
beyond the paper (``evaluation_table``). An attack that does no better than its majority class on
its shadow data is marked with a dagger wherever its efficacy is shown.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from prunelora_keras.experiment.labels import (  # noqa: F401  (re-exported)
    _atomic_write, final_rows, fmt as _fmt, method_label, save_figure)
from prunelora_keras.experiment.pool_report import pool_table, ulira_table
from prunelora_keras.experiment.terminal import closing_lines, fit_width  # noqa: F401  (fit_width: re-exported)

ROW_KEYS = ("paradigm", "epochs", "UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA", "rte_s", "compile_s",
            "prepare_s", "peak_mem_bytes", "mem_kind", "trainable_params", "sparsity", "attack_acc_loss_logreg",
            "attack_acc_confidence_svc", "avg_gap", "status", "tow", "MIA_entropy_svc", "MIA_m_entropy_svc",
            "attack_acc_entropy_svc", "attack_acc_m_entropy_svc", "attack_degenerate_loss_logreg",
            "attack_degenerate_confidence_svc", "attack_degenerate_entropy_svc", "attack_degenerate_m_entropy_svc",
            "probe_forget_acc", "probe_forget_acc_test", "cka_forget", "cka_retain", "relearn_steps", "relearn_capped",
            "classifier_rows_pruned", "forget_row_pruned", "MIA_rmia_auc", "MIA_rmia_tpr_1pct", "MIA_rmia_tpr_01pct",
            "rmia_references")
# --eval-models K only, on each method's row at its largest epoch count (many_models.py)
MANY_MODEL_KEYS = ("forgetting_quality", "forgetting_quality_ceiling", "klom_forget", "klom_retain", "klom_test",
                   "eval_models", "pool_rmia_auc", "pool_rmia_tpr_1pct")
# --eval-ulira S only, on the same rows (ulira_run.py)
ULIRA_KEYS = ("ulira_acc", "ulira_acc_lo", "ulira_acc_hi", "ulira_tpr_at_0.01", "ulira_tpr_at_0.001",
              "ulira_acc_retain", "ulira_acc_original", "ulira_acc_floor", "ulira_acc_retain_original", "ulira_shadows")
ROW_KEYS = ROW_KEYS + MANY_MODEL_KEYS + ULIRA_KEYS
DAGGER = "†"
DAGGER_NOTE = (f"{DAGGER} degenerate attack: on its own shadow data it does no better than predicting its larger class "
               "for everything (within 2 points), so that efficacy says nothing about the model.")
ATTACKS = ("loss_logreg", "confidence_svc", "entropy_svc", "m_entropy_svc")
REGROWN = "‡"


def pruning_hparams(results: dict[str, Any], name: str) -> tuple[float, str]:
    """(amount, mode) of method ``name``'s pruning in a run's ``results`` (its ``methods.<name>``
    hyperparameters; results written before methods owned them: ``unlearn.prune_amount/mode``)."""
    config = results.get("config") or {}
    h = (config.get("methods") or {}).get(name) or {}
    u = config.get("unlearn") or {}
    return h.get("amount", u.get("prune_amount", 0.5)), h.get("mode", u.get("prune_mode", "reference"))


def regrown_note(results: dict[str, Any], names: list[str]) -> str:
    """Why the sparsity of the pruned methods ``names`` is far below their pruning amount: under the
    reference mask mode the zeros are set once, and fine-tuning regrows them."""
    amounts = sorted({f"{pruning_hparams(results, n)[0]:.0%}" for n in names})
    return (f"{REGROWN} pruned once: {' or '.join(amounts)} of the target layers' units were L2-pruned before "
            f"unlearning, but {', '.join(f'{n}.mode' for n in names)} = reference (the paper's code: torch's "
            "prune.remove) sets the zeros once and training then regrows them, so the sparsity shown is what is "
            f"left at the end; --set {names[0]}.mode=persistent keeps them at zero.")


def regrown(row: dict[str, Any], results: dict[str, Any]) -> bool:
    """Whether ``row`` is a method that pruned (it carries the pruning diagnostics) whose zeros
    regrew under ``mode = reference``: its final sparsity is below the pruning amount."""
    amount, mode = pruning_hparams(results, row.get("paradigm", ""))
    pruned = any(k in row for k in ("pruned_units", "classifier_rows_pruned", "forget_row_pruned"))
    sparsity = row.get("sparsity")
    return (pruned and mode == "reference" and sparsity is not None
            and np.isfinite(sparsity) and sparsity < 100.0 * amount - 0.5)


def degenerate(row: dict[str, Any], metric: str) -> bool:
    """Whether the attack behind ``metric`` (``MIA_<attack>``) was degenerate for this row (in any
    seed or class of a folded row)."""
    return metric.startswith("MIA_") and bool(row.get(f"attack_degenerate_{metric[4:]}"))


def _cell(row: dict[str, Any], key: str, digits: int = 2) -> str:
    """A value, or "mean ± std" for rows folded over several seeds or classes; a dagger after a
    degenerate attack's efficacy."""
    mark = DAGGER if degenerate(row, key) else ""
    if f"{key}_std" in row:
        return f"{_fmt(row.get(key), digits)} ± {_fmt(row[f'{key}_std'], digits)}{mark}"
    return _fmt(row.get(key), digits) + mark


def results_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(ROW_KEYS)
    rows = [{k: (";".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()} for r in rows]
    if any("n_seeds" in r for r in rows):  # folded over seeds: each metric's standard deviation beside it
        keys += ["n_seeds"] + sorted({k for r in rows for k in r if k.endswith("_std")})
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    return buf.getvalue()


def paper_table(results: dict[str, Any]) -> str:
    """Markdown laid out like the paper's Table 1: each metric per epoch count, then RTE and memory.

    Continual unlearning (rows with ``request``): one such table after each forget request."""
    rows = results["rows"]
    requests = list(dict.fromkeys(r["request"] for r in rows if "request" in r))
    if requests:
        parts = []
        for k in requests:
            sub = [{key: v for key, v in r.items() if key != "request"} for r in rows if r.get("request") == k]
            forgotten = ", ".join(map(str, sub[0].get("forgotten", [])))
            parts.append(f"After request {k} (forgotten so far: classes {forgotten}):\n\n"
                         + paper_table({**results, "rows": sub, "original": {} if k != requests[-1] else
                                        results.get("original", {})}))
        return "\n\n".join(parts)
    epochs = sorted({r["epochs"] for r in rows if r["paradigm"] != "retrain"} or {r["epochs"] for r in rows})
    metrics = [("UA", "UA"), ("MIA_loss_logreg", "MIA (loss, LR)"), ("MIA_confidence_svc", "MIA (conf, SVC)"),
               ("RA", "RA"), ("TA", "TA")]
    if any("avg_gap" in r for r in rows):
        metrics.append(("avg_gap", "Avg. Gap"))
    head = ["paradigm"] + [f"{label} {e}ep" for _, label in metrics for e in epochs]
    head += ["RTE s/epoch", "compile s", "peak mem GB", "trainable", "sparsity %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["paradigm"], r["epochs"]): r for r in rows}
    paradigms = list(dict.fromkeys(r["paradigm"] for r in rows))
    for p in paradigms:
        last = max((r for r in rows if r["paradigm"] == p), key=lambda r: r["epochs"])
        if last.get("status", "ok") != "ok":
            lines.append(f"| {method_label(p)} | failed: {last['status']} |")
            continue
        cells = [method_label(p)]
        for key, _ in metrics:
            for e in epochs:
                row = by_key.get((p, e)) or (by_key.get((p, last["epochs"])) if p == "retrain" else None)
                cells.append(_cell(row, key) if row else "-")
        mem = last.get("peak_mem_bytes")
        mem_txt = f"{mem / 1e9:.2f}" + (" (RSS)" if last.get("mem_kind") == "host_rss" else "") if mem else "-"
        cells += [_cell(last, "rte_s"), _fmt(last.get("compile_s"), 1), mem_txt,
                  (f"{last['trainable_params']:,}" if last.get("trainable_params") is not None else "-"),
                  _fmt(last.get("sparsity"), 1) + (REGROWN if regrown(last, results) else "")]
        lines.append("| " + " | ".join(cells) + " |")
    o = results.get("original", {})
    if o:
        lines.append("")
        lines.append(f"Original model: UA {_cell(o, 'UA')}, MIA (loss, LR) {_cell(o, 'MIA_loss_logreg')}, "
                     f"MIA (conf, SVC) {_cell(o, 'MIA_confidence_svc')}, RA {_cell(o, 'RA')}, "
                     f"TA {_cell(o, 'TA')}. Attack accuracy on shadow data: loss/LR "
                     f"{_fmt(o.get('attack_acc_loss_logreg'))}%, confidence/SVC {_fmt(o.get('attack_acc_confidence_svc'))}%.")
        for name, label in (("loss_logreg", "loss/LR"), ("confidence_svc", "confidence/SVC")):
            if o.get(f"attack_degenerate_{name}"):
                lines.append(f"Warning: the {label} attack does no better than predicting its larger class on the "
                             "original model's shadow data, so its MIA-Efficacy column carries no information "
                             "(the original model does not separate members from non-members).")
    if any(degenerate(r, f"MIA_{a}") for r in rows for a in ATTACKS[:2]):
        lines += ["", DAGGER_NOTE]
    regrew = [r for r in rows if r.get("status", "ok") == "ok" and regrown(r, results)]
    if regrew:
        lines += ["", regrown_note(results, list(dict.fromkeys(r["paradigm"] for r in regrew)))]
    return "\n".join(lines)


def rmia_note(class_wise: bool) -> str:
    """What the RMIA column measures, in the words of the run's scenario.

    Args:
        class_wise: whether the run forgot whole classes (the unseen set is then the class's test images).
    Returns:
        the note, one paragraph.

    Example:
        >>> "forgotten class's test images" in rmia_note(True), "half of the test set" in rmia_note(False)
        (True, True)
    """
    unseen = "the forgotten class's test images" if class_wise else "the test set"
    return (f"RMIA AUC: RMIA (Zarifzadeh et al. 2024; softmax signal, offline, gamma 2, a 0.33) with the Retrain "
            f"model as its one reference model, D_f against half of {unseen} (the other half its population); 50: "
            "D_f looks as unseen as unseen images do. Not AMUN's \"FT AUC\" (soft-margin signal, 128 online "
            "references), so not on its scale. Retrain has no independent reference here (`--eval-models K`: the "
            "pool table's RMIA column, with a second Retrain pool).")


EVAL_COLUMNS = (("tow", "ToW", 3), ("MIA_entropy_svc", "MIA (entropy, SVC)", 2),
                ("MIA_m_entropy_svc", "MIA (m-entropy, SVC)", 2), ("probe_forget_acc", "probe D_f", 1),
                ("probe_forget_acc_test", "probe test", 1), ("cka_forget", "CKA D_f", 3), ("cka_retain", "CKA retain", 3),
                ("relearn_steps", "relearn steps", 0), ("MIA_rmia_auc", "RMIA AUC", 1))


def evaluation_table(results: dict[str, Any]) -> str:
    """The evaluation beyond the paper, at each paradigm's largest epoch count (markdown).

    ToW; the entropy and modified-entropy attacks; the linear probes (percent of the held-out half
    of D_f, and of the forget class's test half, labelled right from the frozen features); linear
    CKA of the features with Retrain's on D_f and on the retained test images; relearn steps (a
    ">" marks a run that hit the cap, ``>200``: not back within 200 steps; in a row folded over seeds
    or classes, a mean that includes a capped run, so a lower bound); RMIA's AUC with Retrain as the
    reference model; which class rows of the classifier were pruned.
    """
    rows = [r for r in results["rows"] if r.get("status", "ok") == "ok" and "request" not in r]
    if not rows or not any("probe_forget_acc" in r for r in rows):
        return ""
    columns = [c for c in EVAL_COLUMNS if any(c[0] in r for r in rows)]  # e.g. no test probe: no forgotten class
    head = ["paradigm", "epochs"] + [label for _, label, _ in columns] + ["class rows pruned"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p, r in final_rows(rows).items():
        cells = [method_label(p), str(r["epochs"])]
        for key, _, digits in columns:
            text = _cell(r, key, digits)
            if key == "relearn_steps" and r.get("relearn_capped") and text != "-":
                text = ">" + text
            cells.append(text)
        pruned = r.get("classifier_rows_pruned")
        hit = r.get("forget_row_pruned")
        cells.append("-" if pruned is None else (", ".join(map(str, pruned)) or "none")
                     + (" (forget row)" if hit is True else ""))
        lines.append("| " + " | ".join(cells) + " |")
    o = results.get("original", {})
    if "probe_forget_acc" in o:
        test = f", probe test {_cell(o, 'probe_forget_acc_test', 1)}" if "probe_forget_acc_test" in o else ""
        lines += ["", f"Original model: probe D_f {_cell(o, 'probe_forget_acc', 1)}{test}."]
    if any(degenerate(r, f"MIA_{a}") for r in rows for a in ATTACKS[2:]):
        lines += ["", DAGGER_NOTE]
    if any("MIA_rmia_auc" in r for r in rows):
        lines += ["", rmia_note(class_wise=_class_wise(results))]
    if any(r.get("relearn_capped") for r in rows):
        config = results.get("config") or {}  # (results before the [eval] section: unlearn.relearn_max_steps)
        cap = (config.get("eval") or {}).get("relearn_max_steps") or (config.get("unlearn") or {}).get("relearn_max_steps")
        lines += ["", f"> relearn hit the cap (eval.relearn_max_steps{f' = {cap}' if cap else ''}): D_f was not back "
                      "at the original's accuracy minus 10 points within it; the true count is larger."]
    return "\n".join(lines)


def plot_loss_histograms(losses: dict[str, dict[str, np.ndarray]], path: Path, title: str = "") -> None:
    """The paper's Figure 2: per-sample loss histograms of the test and forget sets, log-scale counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(losses)
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.8), squeeze=False)
    everything = np.concatenate([np.concatenate([v["test"], v["forget"]]) for v in losses.values()])
    top = float(np.percentile(everything, 99.5)) if everything.size else 1.0
    bins = np.linspace(0.0, max(top, 1e-3), 40)
    for ax, name in zip(axes[0], names):
        ax.hist(np.clip(losses[name]["test"], 0, bins[-1]), bins=bins, alpha=0.6, label="test", color="tab:blue")
        ax.hist(np.clip(losses[name]["forget"], 0, bins[-1]), bins=bins, alpha=0.6, label="forget", color="tab:red")
        ax.set_yscale("log")
        ax.set_title(method_label(name), fontsize=12)
        ax.set_xlabel("cross-entropy loss", fontsize=11)
        ax.tick_params(labelsize=10)
    axes[0][0].set_ylabel("count (log)", fontsize=11)
    axes[0][0].legend(fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)


def run_title(results: dict[str, Any]) -> str:
    """"<model> on <data set>, preset <p>, forgetting <what>, seed <s>": what a run or plot shows."""
    cfg, data = results.get("config", {}), results.get("data") or {}
    seeds = sorted(set(results.get("seeds") or []))
    seed = (f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else
            f"seed {seeds[0] if seeds else cfg.get('seed', '')}")
    dataset = f" on {data['dataset']}" if data.get("dataset") else ""
    return (f"{cfg.get('model', {}).get('name', '')}{dataset}, preset {cfg.get('preset', '')}, forgetting "
            f"{data.get('forgetting', '')}, {seed}")


def _class_wise(results: dict[str, Any]) -> bool:
    """Whether the run forgot whole classes (some test images are of a forgotten class); True for results
    that do not say (written before ``data`` recorded the test split's sizes)."""
    data = results.get("data") or {}
    return "test_retain" not in data or data.get("test_retain") != data.get("test")


def accuracy_table(results: dict[str, Any]) -> str:
    """A markdown table of each trained stage's accuracy per evaluation set ("" without stages:
    results folded over seeds or classes keep them in each run's own folder)."""
    if not results.get("stages"):
        return ""
    cols = [("train", "train"), ("test", "test (all classes)"), ("retain", "D_r"), ("forget", "D_f")]
    if _class_wise(results):  # forgetting samples: no test image is of a forgotten class, "remaining" is all
        cols += [("test_retain", "test, remaining"), ("test_forget", "test, forget class")]
    if any("test_tta" in stage["accuracies"] for stage in results["stages"].values()):  # eval.tta
        cols.insert(2, ("test_tta", "test with TTA"))
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, stage in results["stages"].items():
        cells = [f"{stage['accuracies'][k]:.2f}" if k in stage["accuracies"] else "-" for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_metric_bars(results: dict[str, Any], path: Path) -> None:
    """Every percentage metric of the table per paradigm at its largest epoch count (UA, both MIAs, RA,
    TA), and Avg. Gap beside them; error bars: the spread over seeds or classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("status", "ok") == "ok"]
    if not rows:
        return
    final = {}
    for r in rows:
        if r["paradigm"] not in final or r["epochs"] > final[r["paradigm"]]["epochs"]:
            final[r["paradigm"]] = r
    names = list(final)
    x = np.arange(len(names))
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(1.9 * len(names) + 4, 4.6),
                                     gridspec_kw={"width_ratios": [4, 1]})
    series = (("UA", "tab:red"), ("MIA_loss_logreg", "tab:purple"), ("MIA_confidence_svc", "tab:orange"),
              ("RA", "tab:green"), ("TA", "tab:blue"))
    width = 0.8 / len(series)
    for i, (key, color) in enumerate(series):
        spread = [final[n].get(f"{key}_std", 0.0) for n in names]
        label = {"MIA_loss_logreg": "MIA (loss, LR)", "MIA_confidence_svc": "MIA (conf, SVC)"}.get(key, key)
        xs = x + (i - (len(series) - 1) / 2) * width
        ax.bar(xs, [final[n].get(key, 0.0) for n in names], width, label=label, color=color,
               yerr=spread if any(spread) else None, capsize=2)
        for xi, n in zip(xs, names):  # a degenerate attack's bar carries the dagger
            if degenerate(final[n], key):
                ax.text(xi, final[n].get(key, 0.0) + 1, DAGGER, ha="center", fontsize=9)
    if any(degenerate(final[n], f"MIA_{a}") for n in names for a in ATTACKS[:2]):
        fig.text(0.01, 0.01, DAGGER + " degenerate attack (no better than its majority class on shadow data)", fontsize=9)
    labels = [f"{method_label(n)}\n({final[n]['epochs']} ep)" for n in names]
    ax.set_xticks(x, labels, fontsize=10)
    ax.tick_params(axis="y", labelsize=10)
    ax.set_ylabel("percent", fontsize=11)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=10, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    gaps = [final[n].get("avg_gap", np.nan) for n in names]
    gap_spread = [final[n].get("avg_gap_std", 0.0) for n in names]
    gap_ax.bar(x, gaps, 0.6, color="tab:gray", yerr=gap_spread if any(gap_spread) else None, capsize=2)
    gap_ax.set_xticks(x, [method_label(n) for n in names], fontsize=9, rotation=45, ha="right")
    gap_ax.set_title("Avg. Gap to Retrain (points)", fontsize=11)
    gap_ax.tick_params(axis="y", labelsize=10)
    fig.suptitle(run_title(results), fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(results: dict[str, Any], out_dir: Path, losses: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """Write results.json, results.csv, results.md and the PNG plots (atomically, file by file)."""
    _atomic_write(out_dir / "results.json", json.dumps(results, indent=2))
    _atomic_write(out_dir / "results.csv", results_csv(results["rows"]))
    extra = evaluation_table(results)
    pools, attack = pool_table(results), ulira_table(results)
    accuracies = accuracy_table(results)
    _atomic_write(out_dir / "results.md", f"# {run_title(results)}\n\n"
                  + (f"Accuracy (%) of the trained models:\n\n{accuracies}\n\n" if accuracies else "")
                  + paper_table(results) + "\n"
                  + (f"\nEvaluation beyond the paper (largest epoch count):\n\n{extra}\n" if extra else "")
                  + (f"\nMany-model evaluation (largest epoch count):\n\n{pools}\n" if pools else "")
                  + (f"\nU-LiRA (largest epoch count):\n\n{attack}\n" if attack else "")
                  + f"\n{closing_lines(results)}\n")
    if losses:
        epochs = max((r["epochs"] for r in results["rows"] if r.get("status", "ok") == "ok"), default=0)
        plot_loss_histograms(losses, out_dir / "loss_histograms.png",
                             f"{run_title(results)}: per-sample losses, test vs forget set, after {epochs} unlearning "
                             "epochs (Retrain: its final model)")
    plot_metric_bars(results, out_dir / "metrics.png")
