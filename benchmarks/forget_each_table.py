"""The README's per-class table for issue 13's experiment (benchmarks/forget_each.sh).

Reads the folded results of a model's --forget-each run and of its Pruned LoRA variant (the
classifier's pruning switched) and writes one markdown file: per class, UA, the linear probe on
D_f and whether pruning zeroed the forget class's own logit row, for every paradigm; then the
means over classes of every evaluation metric; then UA of the pruned paradigms split by whether
the forget row was pruned.

    python benchmarks/forget_each_table.py benchmarks/results/forget-each-vit.json \
        benchmarks/results/forget-each-vit-nohead.json --variant-label "Pruned LoRA, head not pruned" \
        --out benchmarks/results/forget-each-vit.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prunelora_keras.experiment.labels import method_label, final_rows

METRICS = (("UA", "UA", 1), ("MIA_confidence_svc", "MIA conf", 1), ("RA", "RA", 1), ("TA", "TA", 1),
           ("tow", "ToW", 3), ("probe_forget_acc", "probe D_f", 1), ("probe_forget_acc_test", "probe test", 1),
           ("cka_forget", "CKA D_f", 3), ("cka_retain", "CKA retain", 3), ("relearn_steps", "relearn steps", 0))


def load(path: str) -> dict:
    """A folded results.json, or a --forget-each run folder whose finished classes are folded here
    (a sweep still running, or stopped: only the classes with a results.json count)."""
    p = Path(path)
    if p.is_file():
        return json.loads(p.read_text())
    from prunelora_keras.experiment.sweep import fold_classes

    runs = [json.loads(f.read_text()) for f in sorted(p.glob("class*/results.json"))]
    runs = [r for r in runs if r.get("rows")]
    if not runs:
        raise SystemExit(f"{path}: no finished class yet")
    return fold_classes(sorted(runs, key=lambda r: r["data"]["forget_class"]))


def class_rows(folded: dict) -> dict[int, dict[str, dict]]:
    return {c["class"]: final_rows([r for r in c["rows"] if r.get("status", "ok") == "ok"]) for c in folded["per_class"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("main", help="folded results.json or the --forget-each run folder")
    parser.add_argument("variant", nargs="?", help="the same for the Pruned LoRA variant")
    parser.add_argument("--variant-label", default="Pruned LoRA (variant)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folded = load(args.main)
    per = class_rows(folded)
    labels = {p: method_label(p) for p in final_rows(folded["rows"])}
    if args.variant and Path(args.variant).exists():
        for c, rows in class_rows(load(args.variant)).items():
            if "pruned_lora" in rows and c in per:
                per[c]["variant"] = rows["pruned_lora"]
        labels["variant"] = args.variant_label
    classes = sorted(per)
    names = {c["class"]: c.get("class_name") or str(c["class"]) for c in folded["per_class"]}
    out = [f"Model {folded['config']['model']['name']}, preset {folded['config']['preset']}, seed(s) "
           f"{sorted(set(folded['seeds']))}, forget classes {classes}, device {folded.get('device')}; each paradigm "
           f"at its largest epoch count.", ""]
    head = ["paradigm"] + [f"{c} {names[c]}" for c in classes] + ["mean"]
    for key, title, digits in (("UA", "UA (%)", 1), ("probe_forget_acc", "Linear probe on held-out D_f (%)", 1),
                               ("relearn_steps", "Relearn steps (capped runs marked >)", 0)):
        out += [f"{title} per forget class:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p, label in labels.items():
            cells, values = [label], []
            for c in classes:
                r = per[c].get(p)
                if r is None or r.get(key) is None:
                    cells.append("-")
                    continue
                values.append(r[key])
                mark = "*" if r.get("forget_row_pruned") is True and key == "UA" else ""
                capped = ">" if key == "relearn_steps" and r.get("relearn_capped") else ""
                cells.append(f"{capped}{r[key]:.{digits}f}{mark}")
            cells.append(f"{np.mean(values):.{digits}f}" if values else "-")
            out.append("| " + " | ".join(cells) + " |")
        if key == "UA":
            out += ["", "\\* pruning zeroed the forget class's own row of the classifier."]
        out.append("")
    out += ["Means over classes (± std):", "", "| paradigm | " + " | ".join(t for _, t, _ in METRICS) + " |",
            "|" + "---|" * (len(METRICS) + 1)]
    for p, label in labels.items():
        cells = [label]
        for key, _, digits in METRICS:
            values = [per[c][p][key] for c in classes if p in per[c] and per[c][p].get(key) is not None]
            values = [v for v in values if np.isfinite(v)]
            cells.append(f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if values else "-")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "UA of the pruned paradigms by whether the forget class's classifier row was pruned:", "",
            "| paradigm | row pruned: classes | mean UA | row kept: classes | mean UA |", "|---|---|---|---|---|"]
    for p in ("pruned", "pruned_lora", "variant"):
        if p not in labels:
            continue
        hit = [c for c in classes if p in per[c] and per[c][p].get("forget_row_pruned") is True]
        kept = [c for c in classes if p in per[c] and per[c][p].get("forget_row_pruned") is False]
        mean = lambda cs: f"{np.mean([per[c][p]['UA'] for c in cs]):.1f}" if cs else "-"  # noqa: E731
        out.append(f"| {labels[p]} | {', '.join(map(str, hit)) or '-'} | {mean(hit)} | "
                   f"{', '.join(map(str, kept)) or '-'} | {mean(kept)} |")
    Path(args.out).write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
