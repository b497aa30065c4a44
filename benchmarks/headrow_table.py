"""The head-row question's table (benchmarks/cpu10k.sh headrow-<model>): per forget class, whether L2
pruning zeroed that class's own classifier row, and Pruned LoRA's UA, RA, TA and linear probe on
held-out D_f; then UA split by the row's fate, and the original's per-class accuracy on D_f.

    python benchmarks/headrow_table.py runs/cpu10k-vit-headrow/results.json > benchmarks/results/cpu10k-vit-headrow.md

The head-row law (found in the memorisation regime): UA is 100 exactly when the forget class's row
is pruned. A class whose row is pruned cannot be predicted at all, whatever the rest of the network
still knows; the probe column says whether the features still know it.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def render(results: dict) -> str:
    lines = ["| forget class | row pruned | UA | RA | TA | probe D_f | original's D_f accuracy |", "|---" * 7 + "|"]
    hit, miss = [], []
    rows_pruned = None
    for c in results["per_class"]:
        final = max((r for r in c["rows"] if r["paradigm"] == "pruned_lora" and r.get("status", "ok") == "ok"),
                    key=lambda r: r["epochs"], default=None)
        if final is None:
            lines.append(f"| {c['class']} {c.get('class_name') or ''} | - | (not finished) | | | | |")
            continue
        rows_pruned = final.get("classifier_rows_pruned", rows_pruned)
        pruned = final.get("forget_row_pruned")
        (hit if pruned else miss).append(final["UA"])
        original_forget = 100.0 - c["original"]["UA"] if c.get("original") else float("nan")
        lines.append(f"| {c['class']} {c.get('class_name') or ''} | {'yes' if pruned else 'no'} | {final['UA']:.1f} | "
                     f"{final['RA']:.1f} | {final['TA']:.1f} | {final.get('probe_forget_acc', float('nan')):.1f} | "
                     f"{original_forget:.1f} |")
    lines.append("")
    lines.append(f"Classifier rows zeroed by L2 pruning (the same whatever the class): {rows_pruned}.")
    for label, values in (("pruned", hit), ("kept", miss)):
        if values:
            lines.append(f"UA when the forget row was {label}: mean {np.mean(values):.1f} over {len(values)} classes "
                         f"(min {min(values):.1f}, max {max(values):.1f}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/headrow_table.py RUN/results.json")
    print(render(json.load(open(sys.argv[1]))), end="")
