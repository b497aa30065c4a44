"""The one table of a GPU window (benchmarks/gpu.sh): each step's status, the paper-size epoch
timings, the full-CIFAR-10 pipeline (original, Retrain, PruneLoRA) and the many-model pools.

    python benchmarks/gpu_table.py OUT_DIR > OUT_DIR/gpu-table.md

Reads what the steps wrote into OUT_DIR (gpu-steps.tsv, epoch_time-*.json, pipeline/results.json,
ensemble-*.json); a step that failed or ran out of time shows as such and its section says so.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

PARADIGMS = {"retrain": "Retrain", "pruned_lora": "Pruned LoRA (PruneLoRA)", "finetune": "Finetune", "pruned": "Pruned",
             "lora": "LoRA"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def steps_table(out: Path) -> list[str]:
    lines = ["| step | status | wall s |", "|---|---|---|"]
    with open(out / "gpu-steps.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            lines.append(f"| {row['step']} | {row['status']} | {row['wall_s']} |")
    return lines


def timing_table(out: Path) -> list[str]:
    lines = ["| model | paradigm | prefix cache | s/epoch | s/step | steps/epoch | compile s |", "|---" * 7 + "|"]
    for model in ("vit", "resnet50"):
        result = _load(out / f"epoch_time-{model}.json")  # written row by row: a step cut short keeps its rows
        if result is None:
            lines.append(f"| {model} | (no result: see the step's status) | | | | | |")
            continue
        for r in result["rows"]:
            lines.append(f"| {model} ({result['preset']}) | {r['paradigm']} | {'on' if r['prefix_cache'] else 'off'} | "
                         f"{r['epoch_s_median']:.3f} | {r['step_s_median']:.4f} | {r['steps_per_epoch']} | "
                         f"{r['compile_s']:.1f} |")
    return lines


def pipeline_table(result: dict | None) -> list[str]:
    if result is None:
        return ["(no result: see the step's status)"]
    m, p = result["config"]["model"], result["config"]["pretrain"]
    size = (f"width {m['width']}" if m["name"].startswith("resnet") else f"widths {m.get('widths')}"
            if m["name"] == "airbench" else f"dim {m['dim']}, depth {m['depth']}")
    lines = [f"Model {m['name']} ({size}); pretraining {p['epochs']} epochs {p['optimizer']} lr {p['lr']}, "
             f"{p.get('precision', 'float32')}.", ""]
    stages = result["stages"]
    for name in ("original", "retrain"):
        if name in stages:
            a, hist = stages[name]["accuracies"], stages[name]["history"]
            steady = hist[1:] or hist  # the first epoch's time excludes its compilation already
            epoch_s = sum(h["seconds"] for h in steady) / len(steady) if hist else float("nan")
            tta = f" ({a['test_tta']:.2f}% with TTA)" if "test_tta" in a else ""
            lines.append(f"- {name}: train {a['train']:.2f}%, test {a['test']:.2f}%{tta} after {len(hist)} epochs, "
                         f"{epoch_s:.2f} s/epoch (compile {hist[0]['compile_s'] or 0:.1f} s)"
                         if hist else f"- {name}: train {a['train']:.2f}%, test {a['test']:.2f}% (reused)")
    lines += ["", "| paradigm | epochs | UA | MIA loss/LR | RA | TA | RTE s/epoch | peak mem GB |", "|---" * 8 + "|"]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {PARADIGMS.get(r['paradigm'], r['paradigm'])} | {r['epochs']} | {r.get('status')} | | | | | |")
            continue
        lines.append(f"| {PARADIGMS.get(r['paradigm'], r['paradigm'])} | {r['epochs']} | {r['UA']:.2f} | "
                     f"{r['MIA_loss_logreg']:.2f} | {r['RA']:.2f} | {r['TA']:.2f} | {r['rte_s']:.2f} | "
                     f"{r['peak_mem_bytes'] / 1e9:.2f} |")
    d = result["data"]
    lines.append(f"\nData: {d['dataset']}, train {d['train']} (retain {d['retain']}, forget {d['forget']}: "
                 f"{d['forgetting']}), test {d['test']}; whole run {result['wall_s'] / 60:.1f} min.")
    return lines


def pools_table(out: Path) -> list[str]:
    lines = ["| model | K | sequential s | pool s | pool mode | speedup | torch sequential s |", "|---" * 7 + "|"]
    for model in ("vit", "resnet50"):
        result = _load(out / f"ensemble-{model}.json")
        if result is None and not (out / f"ensemble-{model}.log").is_file():
            continue  # not a step of this run (a dry run pools the ViT only)
        if result is None:
            lines.append(f"| {model} | (no result: see the step's status) | | | | | |")
            continue
        for r in result["rows"]:
            torch_s = r.get("torch_sequential_s")
            lines.append(f"| {model} ({result['preset']}) | {r['k']} | {r['sequential_s']:.2f} | {r['pool_s']:.2f} | "
                         f"{r['pool_mode']} | {r['speedup']:.2f}x | {'-' if torch_s is None else f'{torch_s:.2f}'} |")
    return lines


def device(out: Path) -> str:
    for name in ("epoch_time-vit.json", "epoch_time-resnet50.json", "pipeline/results.json"):
        result = _load(out / name)
        if result and result.get("device"):
            return str(result["device"])
    return "unknown (no step finished)"


def render(out: Path) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    parts = [f"# GPU window: {device(out)}, {date}", "", "## Steps", *steps_table(out), "",
             "## 1. Unlearning epoch time at the paper's model sizes (synthetic 32x32 batches of 128)",
             *timing_table(out), "", "## 2. The testbed pipeline end to end on CIFAR-10 (`testbed` preset, airbench94, bfloat16)",
             *pipeline_table(_load(out / "pipeline" / "results.json")), "",
             "## 3. Many-model pools against sequential training", *pools_table(out)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python benchmarks/gpu_table.py OUT_DIR (the folder benchmarks/gpu.sh wrote)")
    print(render(Path(sys.argv[1])), end="")
