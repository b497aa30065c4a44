"""The many-model evaluations' report: the pools' table (forgetting quality, KLoM, the ceiling),
U-LiRA's table (beside the original's and the floor's), and their per-example plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunelora_keras.evaluation.ulira import per_example_accuracy
from prunelora_keras.experiment.labels import final_rows, method_label, save_figure


def pool_table(results: dict[str, Any]) -> str:
    """The many-model scores per method (markdown), each beside the ceiling at the same K."""

    rows = [r for r in results["rows"] if "forgetting_quality" in r and "request" not in r]
    if not rows:
        return ""
    k = rows[0]["eval_models"]
    head = ["method", "forgetting quality", "ceiling", "F (forget score)", "median epsilon", "spread vs Retrain",
            "KLoM D_f",
            "KLoM D_r", "KLoM test", "pool UA", "pool RA", "pool TA", "pool RMIA AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in final_rows(rows).items():
        label = method_label(name) + (" (second pool: the ceiling)" if name == "retrain" else "")
        cells = [label] + [f"{r[c]:.3f}" for c in ("forgetting_quality", "forgetting_quality_ceiling", "forget_score",
                                                   "epsilon_median", "spread_ratio_forget", "klom_forget",
                                                   "klom_retain", "klom_test")]
        cells += [f"{r[c]:.2f}" for c in ("pool_UA", "pool_RA", "pool_TA")]
        cells.append(f"{r['pool_rmia_auc']:.1f}" if "pool_rmia_auc" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"K = {k} models per pool. Forgetting quality (NeurIPS 2023 challenge) is at most its ceiling: a "
                  f"second Retrain pool scored against the first at the same K; with K models no rule can show an "
                  f"epsilon above about ceil(log(K - 1)) = {int(np.ceil(np.log(max(k - 1, 1))))}, so finer differences "
                  "are invisible. KLoM: mean KL between the pools' margin histograms per example (0 = "
                  "indistinguishable from Retrain); D_r: a seeded sample. Spread vs Retrain: median over D_f of the "
                  "pool's standard deviation of the confidence across its models over the oracle's (below 1: the "
                  "runs, all from one original, vary less than models trained from scratch). Pool RMIA AUC: RMIA "
                  "(Zarifzadeh et al. 2024) on each model of the pool with the K Retrain models as its reference "
                  "models, D_f against half the retained test images (the other half its population), averaged "
                  "(50: D_f looks as unseen as unseen images)."]
    return "\n".join(lines)


def plot_forgetting_quality(per_example: dict[str, dict[str, np.ndarray]], path: Path, title: str = "") -> None:
    """Histograms of per-example epsilon (D_f) and KLoM (D_f, D_r, test) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    panels = [("epsilon_forget", "epsilon on D_f (forgetting quality)"), ("klom_forget", "KLoM on D_f"),
              ("klom_retain", "KLoM on D_r (sample)"), ("klom_test", "KLoM on the retained test set")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, (key, label) in zip(axes[0], panels):
        values = [v[key] for v in per_example.values()]
        top = max((float(np.max(v)) for v in values if len(v)), default=1.0)
        clip = 6.0 if key == "epsilon_forget" else None  # epsilon: 0.5-wide bins of the score, the cap (50) at 6
        bins = np.arange(0, 6.5, 0.5) if clip else np.linspace(0, max(top, 1e-6), 30)
        for i, (name, v) in enumerate(per_example.items()):
            ceiling = name == "retrain"
            ax.hist(np.minimum(v[key], clip) if clip else v[key], bins=bins, histtype="step",
                    linewidth=2.2 if ceiling else 1.2, color="black" if ceiling else colors[i % len(colors)],
                    label=method_label(name) + (" (ceiling)" if ceiling else ""))
        ax.set_title(label + (" (>= 6 at 6)" if clip else ""), fontsize=9)
        ax.set_xlabel("per example")
    axes[0][0].set_ylabel("examples")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def ulira_table(results: dict[str, Any]) -> str:
    """The U-LiRA scores per method (markdown), beside the original's and the floor."""
    rows = [r for r in results["rows"] if "ulira_acc" in r and "request" not in r]
    if not rows:
        return ""
    head = ["method", "U-LiRA acc", "95% interval", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "U-LiRA acc (D_r sample)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    r = rows[0]
    lines.append(f"| Original (before unlearning) | {r['ulira_acc_original']:.3f} | | | | "
                 f"{r.get('ulira_acc_retain_original', float('nan')):.3f} |")
    for name, r in final_rows(rows).items():
        label = method_label(name) + (" (second pool: the floor)" if name == "retrain" else "")
        lines.append(f"| {label} | {r['ulira_acc']:.3f} | {r['ulira_acc_lo']:.3f}-{r['ulira_acc_hi']:.3f} | "
                     f"{r['ulira_tpr_at_0.01']:.3f} | {r['ulira_tpr_at_0.001']:.3f} | "
                     f"{r.get('ulira_acc_retain', float('nan')):.3f} |")
    r = rows[0]
    lines += ["", f"S = {r['ulira_shadows']} shadows. U-LiRA accuracy: the per-example likelihood-ratio attack telling "
                  f"each shadow's unlearned model from its Retrain on its own forget set (0.5: indistinguishable, the "
                  "goal); the original row is the same test before unlearning, the floor Retrain against a second "
                  "Retrain pool. D_r sample: LiRA membership of retained images under the same shadows (above the "
                  "original's: unlearning exposed what it kept)."]
    return "\n".join(lines)


def plot_ulira(report: Any, path: Path, title: str = "") -> None:
    """Per-example vulnerability (each candidate's own attack accuracy) before unlearning (the
    original shadows, grey) and after, one panel per method, the floor in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report.forget if n not in ("original", "retrain")] or ["retrain"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False, sharey=True)
    bins = np.linspace(0, 1, 21)
    for ax, name in zip(axes[0], names):
        for model, style in (("original", dict(color="0.6", histtype="stepfilled", alpha=0.6)),
                             ("retrain", dict(color="black", histtype="step", linewidth=1.6)),
                             (name, dict(color="tab:red", histtype="step", linewidth=1.6))):
            acc = per_example_accuracy(report.forget[model])[1]
            label = {"original": "original (before)", "retrain": "Retrain (the floor)"}.get(model, method_label(model))
            ax.hist(acc, bins=bins, label=f"{label} ({report.forget[model].acc:.2f})", **style)
        ax.set_title(method_label(name), fontsize=9)
        ax.set_xlabel("attack accuracy on the example")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("forget candidates")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
