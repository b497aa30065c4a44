"""The README's tuned-against-default table from a search folder's tune.json.

Usage: python benchmarks/tune_table.py runs/tune-vit-quick/tune.json [--sort tuned|default]
Rows: each method's defaults and its tuned hyperparameters, both scored once on the untouched split
(UA, RA, TA, Avg. Gap to Retrain, ToW), the validation objective and the tuning cost (the trials' seconds).
"""

from __future__ import annotations

import argparse
import json
import math

LABELS = {"finetune": "Finetune", "pruned": "Pruned", "lora": "LoRA", "pruned_lora": "Pruned LoRA", "ga": "GA",
          "rl": "RL", "l1_sparse": "l1-sparse", "salun": "SalUn", "neggrad_plus": "NegGrad+", "scrub": "SCRUB",
          "ssd": "SSD", "bad_teacher": "Bad Teacher", "msg": "MSG"}


def cell(value, digits=1):
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def params(p: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tune_json")
    ap.add_argument("--sort", default="tuned", choices=("tuned", "default"))
    args = ap.parse_args()
    data = json.load(open(args.tune_json))
    methods = data["methods"]
    order = sorted(methods, key=lambda m: methods[m][args.sort].get("avg_gap", 1e9))
    print("| method | Avg. Gap default | Avg. Gap tuned | UA | RA | TA | ToW | tuned hyperparameters | validation gap (default -> tuned) | tuning s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in order:
        d, t, trials = methods[m]["default"], methods[m]["tuned"], methods[m]["trials"]
        print(f"| {LABELS.get(m, m)} | {cell(d.get('avg_gap'), 2)} | {cell(t.get('avg_gap'), 2)} | {cell(t.get('UA'))} | "
              f"{cell(t.get('RA'))} | {cell(t.get('TA'))} | {cell(t.get('tow'), 3)} | {params(methods[m]['best']['params'])} | "
              f"{trials[0]['value']:.2f} -> {methods[m]['best']['value']:.2f} | {methods[m]['tuning_s']:.0f} |")


if __name__ == "__main__":
    main()
