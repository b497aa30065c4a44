"""Does a finding hold over forget classes and seeds? One table per metric: a row per method, a column per
(seed, class) run, each run's Retrain beside it, then how many runs the method is within a margin of Retrain.

    python benchmarks/findings_table.py \
        s0c3=benchmarks/results/cpu10k-resnet18-results.json+benchmarks/results/cpu10k-resnet18-methods-results.json \
        s1c3=runs/cpu10k-resnet18-seed1-each/class3/results.json s1c5=runs/cpu10k-resnet18-seed1-each/class5/results.json

Each argument is NAME=FILE[+FILE...]: the results.json files of one run (a methods run beside its main run:
the rows are merged, the first file's row wins). Every method at its largest epoch count. Issue 39: a
headline finding drawn from one class and one seed (Pruned LoRA's probe at Retrain's) did not hold on
another; this table is what the README's findings are now stated from.
"""

from __future__ import annotations

import json
import math
import sys

from prunelora_keras.methods.registry import label  # the report's own method labels

METRICS = (("probe_forget_acc", "probe on held-out D_f", 3.0), ("probe_forget_acc_test", "probe on D_f's test images", 3.0),
           ("RA", "RA", 2.0), ("TA", "TA", 2.0), ("UA", "UA", 1.0), ("avg_gap", "Avg. Gap", None))


def final_rows(files: list[str]) -> dict[str, dict]:
    """{method: its row at the largest epoch count} over the files of one run (the first file wins)."""
    final: dict[str, dict] = {}
    for path in files:
        seen: dict[str, dict] = {}
        for r in json.loads(open(path).read())["rows"]:
            if r.get("status", "ok") == "ok" and r["epochs"] >= seen.get(r["paradigm"], {"epochs": -1})["epochs"]:
                seen[r["paradigm"]] = r
        for name, row in seen.items():
            final.setdefault(name, row)
    return final


def render(runs: dict[str, dict[str, dict]]) -> str:
    """One markdown table per metric of ``runs`` ({run name: final_rows}), with the count of runs where each
    method is within the metric's margin of that run's Retrain."""
    names = list(runs)
    methods = [m for m in dict.fromkeys(m for rows in runs.values() for m in rows)]
    out = []
    for key, title, margin in METRICS:
        head = f"| method | {' | '.join(names)} |" + (f" within {margin:g} of Retrain |" if margin else " mean |")
        lines = [f"**{title}**", "", head, "|---" * (len(names) + 2) + "|"]
        for m in sorted(methods, key=lambda m: m != "retrain"):
            cells, near, values = [], 0, []
            for n in names:
                row, ref = runs[n].get(m), runs[n].get("retrain")
                value = row.get(key) if row else None
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    cells.append("-")
                    continue
                values.append(value)
                cells.append(f"{value:.1f}" if key != "avg_gap" else f"{value:.2f}")
                if margin and ref is not None and ref.get(key) is not None and abs(value - ref[key]) <= margin:
                    near += 1
            last = (f"{near}/{len(values)}" if margin else
                    (f"{sum(values) / len(values):.2f}" if values else "-"))
            lines.append(f"| {label(m)} | {' | '.join(cells)} | {last} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


if __name__ == "__main__":
    runs = {}
    for arg in sys.argv[1:]:
        name, _, files = arg.partition("=")
        runs[name] = final_rows(files.split("+"))
    print(render(runs))
