"""Render a run's results.json as the compact table the README quotes (values at 5 / 10 epochs), or
with ``--many-models`` the many-model table of a ``--eval-models K`` run (largest epoch count).

    python benchmarks/readme_table.py runs/cpu-vit/results.json [more results.json ...]
    python benchmarks/readme_table.py --many-models runs/vit-k32/results.json
"""

from __future__ import annotations

import json
import sys

NAMES = {"retrain": "Retrain", "finetune": "Finetune", "pruned": "Pruned", "lora": "LoRA", "pruned_lora": "Pruned LoRA"}
METRICS = [("UA", "UA"), ("MIA_loss_logreg", "MIA loss/LR"), ("MIA_confidence_svc", "MIA conf/SVC"), ("RA", "RA"),
           ("TA", "TA")]


def reused_note(results: dict) -> str:
    """How long the reused checkpoints took to train when they were made (their epoch history)."""
    reused = {k: v for k, v in results["stages"].items() if v.get("reused")}
    if not reused:
        return "."
    minutes = sum(h["seconds"] + (h.get("compile_s") or 0) for v in reused.values() for h in v["history"]) / 60
    return f" with {' and '.join(reused)} reused from earlier runs (their training took {minutes:.1f} min)."


def table(results: dict) -> str:
    epochs = sorted({r["epochs"] for r in results["rows"]})
    by = {(r["paradigm"], r["epochs"]): r for r in results["rows"]}
    head = " / ".join(str(e) for e in epochs)
    lines = ["| paradigm | " + " | ".join(f"{label} {head}ep" for _, label in METRICS)
             + " | RTE s/epoch | peak mem GB | trainable |", "|---" * (len(METRICS) + 4) + "|"]
    for name, label in NAMES.items():
        rows = [by.get((name, e)) for e in epochs]
        if not any(rows):
            continue
        last = [r for r in rows if r][-1]
        cells = [" / ".join(f"{r[key]:.2f}" if r and r.get("status") == "ok" else "-" for r in rows) for key, _ in METRICS]
        rte = f"{last['rte_s']:.2f}"
        if last.get("prefix_cache"):
            rte += f" (+{last['cache_s']:.1f} s once, cached prefix)"
        mem = f"{last['peak_mem_bytes'] / 1e9:.2f}" + (" RSS" if last.get("mem_kind") == "host_rss" else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rte} | {mem} | {last['trainable_params']:,} |")
    o = results["original"]
    lines.append(f"\nOriginal model: train {o['train_acc']:.1f}%, UA {o['UA']:.2f}, RA {o['RA']:.2f}, TA {o['TA']:.2f}; "
                 f"attack accuracy on shadow data: loss/LR {o.get('attack_acc_loss_logreg', float('nan')):.1f}%, "
                 f"conf/SVC {o.get('attack_acc_confidence_svc', float('nan')):.1f}%. Whole run {results['wall_s'] / 60:.1f} min"
                 + reused_note(results))
    return "\n".join(lines)


def many_models_table(results: dict) -> str:
    """Forgetting quality (beside its ceiling), KLoM and the single-model table's columns per method."""
    from prunelora_keras.experiment.labels import final_rows, method_label

    final = final_rows([r for r in results["rows"] if r.get("status", "ok") == "ok"])
    k = next(r["eval_models"] for r in final.values() if "eval_models" in r)
    lines = ["| method | forgetting quality | spread | KLoM D_f | KLoM D_r | KLoM test | UA | RA | TA | Avg. Gap |",
             "|---" * 10 + "|"]
    for name, r in final.items():
        if "forgetting_quality" not in r:
            continue
        label = "Retrain (2nd pool = ceiling)" if name == "retrain" else method_label(name)
        gap = "-" if name == "retrain" else f"{r.get('avg_gap', float('nan')):.2f}"
        lines.append(f"| {label} | {r['forgetting_quality']:.3f} | {r.get('spread_ratio_forget', float('nan')):.2f} | "
                     f"{r['klom_forget']:.2f} | {r['klom_retain']:.2f} | "
                     f"{r['klom_test']:.2f} | {r['UA']:.1f} | {r['RA']:.1f} | {r['TA']:.1f} | {gap} |")
    lines.append(f"\nK = {k} models per pool; the ceiling (a second Retrain pool against the first) is "
                 f"{final['retrain']['forgetting_quality_ceiling']:.3f}. Whole run {results['wall_s'] / 60:.1f} min.")
    return "\n".join(lines)


if __name__ == "__main__":
    many = "--many-models" in sys.argv
    for path in [a for a in sys.argv[1:] if a != "--many-models"]:
        print(f"<!-- {path} -->")
        results = json.load(open(path))
        print(many_models_table(results) if many else table(results))
        print()
