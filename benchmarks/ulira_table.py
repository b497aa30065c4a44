"""The README's U-LiRA table from a run's results.json: per method at its largest epoch count, the
population attacks, Avg. Gap, forgetting quality (with --eval-models) and U-LiRA beside the
original's value and the floor. Usage: python benchmarks/ulira_table.py RESULTS.json [...]"""

import json
import math
import sys

from prunelora_keras.experiment.labels import final_rows, method_label


def fmt(value, digits=3):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(results: dict) -> str:
    rows = final_rows([r for r in results["rows"] if r.get("status", "ok") == "ok"])
    first = next(iter(rows.values()))
    fq = "forgetting_quality" in first
    head = ["method", "U-LiRA acc (95% CI)", "TPR @ 1% FPR", "U-LiRA D_r", "UA", "MIA (loss)", "MIA (conf)",
            "Avg. Gap"] + (["forgetting quality"] if fq else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| Original (before unlearning) | {fmt(first['ulira_acc_original'])} | | "
             f"{fmt(first.get('ulira_acc_retain_original'))} | | | | |" + (" |" if fq else "")]
    for name, r in sorted(rows.items(), key=lambda kv: (kv[0] != "retrain", kv[1]["ulira_acc"])):
        label = method_label(name) + (" (floor)" if name == "retrain" else "")
        cells = [label, f"{fmt(r['ulira_acc'])} ({fmt(r['ulira_acc_lo'], 2)}-{fmt(r['ulira_acc_hi'], 2)})",
                 fmt(r["ulira_tpr_at_0.01"]), fmt(r.get("ulira_acc_retain")), fmt(r["UA"], 1),
                 fmt(r["MIA_loss_logreg"], 1), fmt(r["MIA_confidence_svc"], 1), fmt(r.get("avg_gap"), 2)]
        if fq:
            cells.append(fmt(r.get("forgetting_quality")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"{path}\n\n{table(json.load(open(path)))}\n")
