"""A methods run's table (benchmarks/cpu10k.sh methods-<model>): every method at its largest epoch count,
Retrain first, then sorted by Avg. Gap, beside the linear probe and CKA on the forget set.

    python benchmarks/methods_table.py runs/cpu10k-resnet18-methods/results.json

Avg. Gap ranks by the outputs (UA, MIA-Efficacy, RA, TA); the probe column says whether the features
still know the forgotten data (Retrain's value is the target), so a reader sees both rankings at once.
"""

from __future__ import annotations

import json
import sys

from prunelora_keras.methods.registry import label  # the report's own method labels


def render(results: dict) -> str:
    """The markdown table of ``results`` (a run's results.json, parsed), then the original's UA and probe."""
    final: dict[str, dict] = {}
    for r in results["rows"]:
        if r.get("status", "ok") == "ok" and r["epochs"] >= final.get(r["paradigm"], {"epochs": -1})["epochs"]:
            final[r["paradigm"]] = r
    lines = ["| method | UA | MIA (conf, SVC) | RA | TA | Avg. Gap | probe on held-out D_f | CKA D_f | RTE s/epoch |",
             "|---" * 9 + "|"]
    for name, r in sorted(final.items(), key=lambda kv: (kv[0] != "retrain", kv[1]["avg_gap"])):
        lines.append(f"| {label(name)} | {r['UA']:.1f} | {r['MIA_confidence_svc']:.1f} | {r['RA']:.1f} | "
                     f"{r['TA']:.1f} | {r['avg_gap']:.2f} | {r.get('probe_forget_acc', float('nan')):.1f} | "
                     f"{r.get('cka_forget', float('nan')):.3f} | {r['rte_s']:.1f} |")
    original = results.get("original", {})
    lines.append("")
    lines.append(f"The original: UA {original.get('UA', float('nan')):.1f}, "
                 f"probe on held-out D_f {original.get('probe_forget_acc', float('nan')):.1f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.loads(open(sys.argv[1]).read())))
