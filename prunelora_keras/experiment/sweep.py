"""Every class, not one: ``--forget-each all`` (or ``0,3,7``) runs one independent class-wise
experiment per class and folds them into one report.

Each class runs in ``<out>/class<N>/`` (complete, resumable and reusable on its own) from one
original model per seed, trained once and shared through ``<out>/checkpoints/``; every class gets
its own Retrain. The runs are folded like ``--seeds`` (``seeds.aggregate``): ``<out>/results.json``,
``results.csv`` and ``results.md`` hold mean ± std over classes (and seeds) per paradigm, and
``results.md`` a per-class table of UA, RA, the linear probe on D_f and whether pruning zeroed
the forget class's own classifier row; ``per_class.png`` plots UA and the probe per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunelora_keras.errors import UserError
from prunelora_keras.experiment.labels import method_label, final_rows, save_figure
from prunelora_keras.experiment.report import _fmt, paper_table, write_report
from prunelora_keras.experiment.terminal import fit_width
from prunelora_keras.experiment.seeds import aggregate

PER_CLASS_METRICS = (("UA", "UA", 1), ("RA", "RA", 1), ("probe_forget_acc", "probe D_f", 1),
                     ("forget_row_pruned", "forget row pruned", None))


def parse_class_request(text: str) -> list[int] | None:
    """``--forget-each``'s syntax alone (no data needed): ``"all"`` -> None, ``"0,3,7"`` -> [0, 3, 7].
    Raises ``UserError`` naming the problem; whether each class exists is ``parse_classes``'s check.

    Example:
        >>> parse_class_request("all"), parse_class_request(" 2, 0 ")
        (None, [2, 0])
    """
    text = text.strip()
    if text == "all":
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--forget-each {text!r}: pass 'all' or a list of classes such as 0,3,7")
    if not all(t.isdigit() for t in items):
        raise UserError(f"--forget-each {text!r}: pass 'all' or class numbers such as 0,3,7")
    classes = [int(t) for t in items]
    if len(set(classes)) != len(classes):
        raise UserError(f"--forget-each {text!r} lists a class twice")
    return classes


def parse_classes(text: str, num_classes: int, dataset: str = "the data set") -> list[int]:
    """``"all"`` -> every class; ``"0,3,7"`` -> [0, 3, 7]. Raises ``UserError`` naming the problem.

    Example:
        >>> parse_classes("all", 3), parse_classes(" 2, 0 ", 3)
        ([0, 1, 2], [2, 0])
    """
    classes = parse_class_request(text)
    if classes is None:
        return list(range(num_classes))
    bad = [c for c in classes if c >= num_classes]
    if bad:
        raise UserError(f"--forget-each: class {bad[0]} is out of range: {dataset} has classes 0..{num_classes - 1}")
    return classes


def fold_classes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dictionary from per-class (and per-seed) results dictionaries.

    Rows hold mean and ``_std`` over every run; ``per_class`` holds, per class, its rows (folded over
    seeds when there are several) and ``classes`` the classes in order.
    """
    folded = aggregate(runs)
    classes = list(dict.fromkeys(run["data"]["forget_class"] for run in runs))
    per_class = []
    for c in classes:
        mine = [run for run in runs if run["data"]["forget_class"] == c]
        rows = aggregate(mine)["rows"] if len(mine) > 1 else mine[0]["rows"]
        per_class.append({"class": c, "class_name": mine[0]["data"].get("class_name"), "rows": rows,
                          "original": mine[0].get("original", {}), "seeds": [run["seed"] for run in mine]})
    folded["classes"] = classes
    folded["per_class"] = per_class
    folded["config"]["data"] = {**folded["config"]["data"], "forget_class": classes}
    folded["data"] = {**(folded.get("data") or {}), "forget_class": classes, "forgetting": f"each of classes {classes}",
                      "class_name": None}
    return folded


WIDE_CLASSES = 12  # above this many forget classes the per-class tables turn: a row per class


def per_class_table(folded: dict[str, Any]) -> str:
    """Markdown: one small table per metric (largest epoch count), a row per paradigm and a column per
    class; past ``WIDE_CLASSES`` classes (CIFAR-100, TinyImageNet) a row per class and a column per
    paradigm, so the table stays readable at 100 or 200 classes."""
    per_class = folded["per_class"]
    paradigms = list(final_rows([r for r in folded["rows"] if r.get("status", "ok") == "ok"]))
    finals = [final_rows([r for r in c["rows"] if r.get("status", "ok") == "ok"]) for c in per_class]
    parts = []
    for key, label, digits in PER_CLASS_METRICS:
        grid = {p: [None if f.get(p) is None else f[p].get(key) for f in finals] for p in paradigms}
        if not any(v is not None for vs in grid.values() for v in vs):
            continue
        means = {p: [float(v) for v in vs if v is not None] for p, vs in grid.items()}
        mean = {p: _fmt(float(np.mean(m)), digits if digits is not None else 2) if m else "-" for p, m in means.items()}
        if len(per_class) <= WIDE_CLASSES:
            head = ["paradigm"] + [str(c["class"]) for c in per_class] + ["mean"]
            body = [[method_label(p)] + [_per_class_cell(v, digits) for v in grid[p]] + [mean[p]] for p in paradigms]
        else:
            head = ["class"] + [method_label(p) for p in paradigms]
            body = [[f"{c['class']} {c.get('class_name') or ''}".strip()] + [_per_class_cell(grid[p][i], digits)
                                                                               for p in paradigms]
                    for i, c in enumerate(per_class)]
            body.append(["mean"] + [mean[p] for p in paradigms])
        lines = [f"{label} per forget class:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _per_class_cell(value: Any, digits: int | None) -> str:
    if value is None:
        return "-"
    if digits is None:  # forget_row_pruned: yes/no, or the fraction of seeds
        return "yes" if value is True else "no" if value is False else f"{100 * value:.0f}%"
    return _fmt(float(value), digits)


def plot_per_class(folded: dict[str, Any], path: Path) -> None:
    """UA and linear-probe accuracy on D_f per forget class and paradigm (two panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = folded["per_class"]
    paradigms = list(final_rows([r for r in folded["rows"] if r.get("status", "ok") == "ok"]))
    classes = [c["class"] for c in per_class]
    many = len(classes) > WIDE_CLASSES  # 100 or 200 classes: markers per class, every k-th class labelled
    fig, axes = plt.subplots(2 if many else 1, 1 if many else 2, figsize=(max(12, len(classes) / 8), 7 if many else 4.2),
                             sharex=True)
    x = np.arange(len(classes))
    width = 0.8 / max(len(paradigms), 1)
    for ax, (key, label) in zip(axes, (("UA", "UA (%)"), ("probe_forget_acc", "linear probe on held-out D_f (%)"))):
        for i, p in enumerate(paradigms):
            values = []
            for c in per_class:
                row = final_rows([r for r in c["rows"] if r.get("status", "ok") == "ok"]).get(p)
                values.append(np.nan if row is None or row.get(key) is None else row[key])
            if many:
                ax.plot(x, values, "o", markersize=3, label=method_label(p))
            else:
                ax.bar(x + (i - (len(paradigms) - 1) / 2) * width, values, width, label=method_label(p))
        ax.set_title(label, fontsize=11)
        if many:
            step = max(1, len(classes) // 25)
            ax.set_xticks(x[::step], [str(c) for c in classes[::step]], fontsize=8)
        else:
            ax.set_xticks(x, [f"{c['class']}\n{c.get('class_name') or ''}" for c in per_class], fontsize=9)
        ax.set_xlabel("forget class", fontsize=10)
        ax.set_ylim(0, 105)
        ax.tick_params(axis="y", labelsize=9)
    axes[0].legend(fontsize=8, ncol=2)
    cfg = folded.get("config", {})
    fig.suptitle(f"{cfg.get('model', {}).get('name', '')}, preset {cfg.get('preset', '')}, seeds "
                 f"{sorted(set(folded.get('seeds') or []))}: each class forgotten in its own run", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def write_class_report(folded: dict[str, Any], out_dir: Path) -> None:
    """The folded report plus the per-class table (appended to results.md) and per_class.png."""
    from prunelora_keras.training.checkpoint import atomic_write_bytes

    write_report(folded, out_dir)
    md = out_dir / "results.md"
    atomic_write_bytes(md, (md.read_text() + "\n" + per_class_table(folded) + "\n").encode())
    plot_per_class(folded, out_dir / "per_class.png")


def summary(folded: dict[str, Any]) -> str:
    """What the command prints for a class sweep: the folded table, the per-class tables, then in words
    what was forgotten and which method came closest to Retrain."""
    from prunelora_keras.experiment.terminal import closing_lines

    return fit_width(paper_table(folded) + "\n\n" + per_class_table(folded) + "\n\n" + closing_lines(folded))
