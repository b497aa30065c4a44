"""What the command prints: wide tables narrowed to the terminal, the run's closing lines, and the
whole run's pace (``Pace``: which method of how many, and the time the rest should take).

``results.md`` keeps the wide tables; the terminal gets them split into parts of at most 100
columns (``fit_width``), then, in words, what was forgotten and which method came closest to
Retrain by Avg. Gap (``closing_lines``).
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from prunelora_keras.training.progress import format_seconds

EPOCH_COLUMN = re.compile(r"^(.*\S)\s+\d+ep$")  # "UA 10ep" -> "UA"


def column_units(head: list[str]) -> list[list[int]]:
    """The table's columns after the first, in runs that belong together: consecutive headers
    naming one metric at several epoch counts ("UA 5ep", "UA 10ep") form one unit.

    Example:
        >>> column_units(["paradigm", "UA 5ep", "UA 10ep", "RA 5ep", "RA 10ep", "RTE s/epoch"])
        [[1, 2], [3, 4], [5]]
    """
    units: list[list[int]] = []
    previous = None
    for i in range(1, len(head)):
        match = EPOCH_COLUMN.match(head[i])
        metric = match.group(1) if match else None
        if units and metric is not None and metric == previous:
            units[-1].append(i)
        else:
            units.append([i])
        previous = metric
    return units


def fit_width(text: str, width: int = 100) -> str:
    r"""``text`` with every markdown table wider than ``width`` split into narrower tables, and
    longer prose lines wrapped.

    Each part repeats the table's first column (the row names) and takes as many of the other
    columns as fit, never splitting one metric's epoch columns ("UA 5ep", "UA 10ep") between parts; lines that are not table rows pass through. For the terminal: ``results.md``
    keeps the wide tables.

    Example:
        >>> print(fit_width("| a | bbbb | cccc |\n|---|---|---|\n| x | 1 | 2 |", width=14))
        | a | bbbb |
        |---|---|
        | x | 1 |
        <BLANKLINE>
        | a | cccc |
        |---|---|
        | x | 2 |
    """
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
        if max(len(line) for line in block) <= width or len(rows[0]) < 3:
            out.extend(block)
        else:
            widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) + 3 for i in range(len(rows[0]))]
            groups, current, used = [], [], widths[0] + 1
            for unit in column_units(rows[0]):  # one metric's epoch columns stay together
                need = sum(widths[i] for i in unit)
                if current and used + need > width:
                    groups.append(current)
                    current, used = [], widths[0] + 1
                current += unit
                used += need
            groups.append(current)
            for k, cols in enumerate(groups):
                if k:
                    out.append("")
                for r in rows:
                    if set(r[0]) <= {"-"}:  # the separator row
                        out.append("|" + "---|" * (len(cols) + 1))
                    elif len(r) == len(rows[0]) or k == 0:  # a short row (e.g. "failed: ...") once, as it is
                        out.append("| " + " | ".join([r[0]] + [r[i] for i in cols if i < len(r)]) + " |")
        block.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            block.append(line)
        else:
            flush()
            out.extend(textwrap.wrap(line, width) if len(line) > width else [line])
    flush()
    return "\n".join(out)


def closing_lines(results: dict[str, Any]) -> str:
    """The run's last lines, in words: what was forgotten, and which method came closest to Retrain
    by Avg. Gap (each method at its largest epoch count; continual unlearning: after the last request).

    Example:
        >>> rows = [{"paradigm": "retrain", "epochs": 2, "avg_gap": 0.0}, {"paradigm": "lora", "epochs": 2,
        ...          "avg_gap": 3.5}, {"paradigm": "finetune", "epochs": 2, "avg_gap": 1.25}]
        >>> print(closing_lines({"rows": rows, "data": {"forgetting": "class 3 'cat'", "dataset": "digits"},
        ...                      "config": {"model": {"name": "vit"}}}))  # doctest: +ELLIPSIS
        Forgotten: class 3 'cat' of digits: the original vit was trained with it, Retrain without it.
        Closest to Retrain by Avg. Gap (...): Finetune, 1.25 points at 2 epochs; then LoRA 3.50.
    """
    from prunelora_keras.experiment.labels import final_rows, method_label

    data, cfg = results.get("data") or {}, results.get("config") or {}
    rows = [r for r in results.get("rows", []) if r.get("status", "ok") == "ok"]
    requests = sorted({r["request"] for r in rows if "request" in r})
    if requests:
        rows = [r for r in rows if r.get("request") == requests[-1]]
        forgotten = ("classes " + ", ".join(map(str, rows[0].get("forgotten", []) if rows else []))
                     + f", in {requests[-1]} requests one after another")
    else:
        forgotten = data.get("forgetting") or "the forget set"
    where = f" of {data['dataset']}" if data.get("dataset") else ""
    one_set = isinstance(data.get("forget"), int) and not isinstance(data.get("forget_class"), list)  # not a sweep
    size = f" ({data['forget']} training images)" if one_set else ""
    model = (cfg.get("model") or {}).get("name") or "model"
    lines = [f"Forgotten: {forgotten}{where}{size}: the original {model} was trained with it, Retrain without it."]
    final = {p: r for p, r in final_rows(rows).items()
             if p != "retrain" and r.get("avg_gap") is not None and np.isfinite(r["avg_gap"])}
    if not any(r["paradigm"] == "retrain" for r in rows):
        lines.append("No method is compared with Retrain (it did not run): add retrain to --paradigms for Avg. Gap.")
    elif not final:
        lines.append("No unlearning method finished beside Retrain, so none is compared with it.")
    else:
        ranked = sorted(final.items(), key=lambda item: item[1]["avg_gap"])
        best_gap = ranked[0][1]["avg_gap"]
        best = [(p, r) for p, r in ranked if round(r["avg_gap"], 2) == round(best_gap, 2)]
        rest = ranked[len(best):]
        spread = f" ± {best[0][1]['avg_gap_std']:.2f}" if "avg_gap_std" in best[0][1] else ""
        names = " and ".join(method_label(p) for p, _ in best) + (" (tied)" if len(best) > 1 else "")
        epochs = sorted({r["epochs"] for _, r in best})
        lines.append("Closest to Retrain by Avg. Gap (the mean absolute difference from Retrain over UA, "
                     "MIA-Efficacy (conf, SVC), RA and TA, in points; lower is closer): "
                     f"{names}, {best_gap:.2f}{spread} points at {'/'.join(map(str, epochs))} {'epoch' if epochs == [1] else 'epochs'}"
                     + ("; then " + ", ".join(f"{method_label(p)} {r['avg_gap']:.2f}" for p, r in rest) if rest else "")
                     + ".")
    retrain = final_rows(rows).get("retrain")
    if (cfg.get("data") or {}).get("forget_fraction") and retrain is not None and retrain.get("UA") is not None:
        lines.append(f"Random forgetting: Retrain's own UA is its error on D_f, {retrain['UA']:.2f}% (images it never "
                     "saw, of classes it still knows), not 100; a method's UA far above it forgets more than Retrain "
                     "would, which an attacker can see. Avg. Gap to Retrain is the ranking.")
    if cfg.get("preset") == "quick":
        lines.append(QUICK_NOTE)
    return "\n".join(lines)


QUICK_NOTE = ("The quick preset is a smoke test (8x8 digits, tiny models, a few epochs): it shows that every stage runs, "
              "not how the methods compare, and its ranking differs from real data. Results on CIFAR-10 that "
              "generalise: --preset cpu-10k (the README's headline results; docs/results.md).")


class Pace:
    """The whole run's ETA over a list of methods, from this run's own pace: the mean time of the methods
    it has trained and evaluated so far (those reused from the run folder, under a second, do not count).

    Example:
        >>> pace = Pace(["finetune", "lora"])
        >>> pace.next("finetune", print)
        --- finetune: method 1/2 ---
    """

    REUSED_S = 1.0  # a method done in less time was read from the run folder, not run

    def __init__(self, names: list[str]):
        self.names, self.done, self.spent = names, 0, []
        self.last: float | None = None

    def next(self, name: str, say: Callable[[str], None]) -> None:
        """Mark the previous method done and announce ``name`` with the time the rest should take."""
        now = time.perf_counter()
        if self.last is not None:
            if now - self.last >= self.REUSED_S:
                self.spent.append(now - self.last)
            self.done += 1
        self.last = now
        left = len(self.names) - self.done
        noun = "method" if left == 1 else "methods"
        eta = f"; about {format_seconds(sum(self.spent) / len(self.spent) * left)} left for the {left} {noun} to go, at " \
              "this run's pace" if self.spent else ""
        say(f"--- {name}: method {self.done + 1}/{len(self.names)}{eta} ---")
