"""The testbed's tables beside the published ones (benchmarks/testbed.sh): class-wise forgetting beside the
paper's ResNet-50 table, random 10% forgetting beside AMUN's Table 1.

    python benchmarks/testbed_table.py --class-wise runs/testbed/class3/results.json \
        runs/testbed/methods-class3/results.json --random runs/testbed/random/results.json > table.md

Each method at its largest epoch count (the paper's four paradigms also at 5 epochs); rows from several
result files of one scenario join (the same original and Retrain: testbed.sh reuses them). Published
numbers are typed in from the papers, with their setting: they are what a reader compares against,
not what we measured.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from prunelora_keras.methods.registry import label

# The paper (PruneLoRA), ResNet-50 on CIFAR-10, class 3, 10 epochs (shared/REFERENCE.md): UA, MIA, RA, TA
PAPER_RESNET50 = {"retrain": (100, 100, 98.02, 96.70), "finetune": (100, 100, 96.27, 91.44),
                  "pruned": (100, 100, 95.68, 90.72), "lora": (100, 100, 97.19, 93.49),
                  "pruned_lora": (99.98, 97.89, 98.00, 95.41)}
# AMUN (Ebrahimpour-Boroojeny et al., ICML 2025) Table 1: ResNet-18, CIFAR-10, a random 10% forgotten;
# Retrain's forget / retain / test accuracy and each method's Avg. Gap to it
AMUN_RETRAIN = (94.49, 100.0, 94.33)
AMUN_GAP = {"finetune": 2.06, "rl": 1.74, "ga": 4.28, "l1_sparse": 2.16, "salun": 1.44, "amun": 0.62}
PAPER4 = ("retrain", "finetune", "pruned", "lora", "pruned_lora")


def _rows(paths: list[str]) -> tuple[dict, dict]:
    """{(method, epochs): row} over the files (the first file's Retrain wins), and the first file's original."""
    rows, original = {}, None
    for path in paths:
        results = json.loads(Path(path).read_text())
        original = original or results.get("original")
        for r in results["rows"]:
            if r.get("status", "ok") == "ok":
                rows.setdefault((r["paradigm"], r["epochs"]), r)
    return rows, original or {}


def _order(rows: dict) -> list[tuple[str, int]]:
    largest = {}
    for name, epochs in rows:
        largest[name] = max(epochs, largest.get(name, 0))
    keys = [(n, e) for (n, e) in rows if e == largest[n] or (n in PAPER4 and n != "retrain")]
    return sorted(keys, key=lambda k: (k[0] != "retrain", rows[k].get("avg_gap", math.inf), k[1]))


def _f(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _table(rows: dict, header: list[str], cells) -> list[str]:
    """The markdown table of ``rows`` in ``_order``: ``cells(name, epochs, row)`` gives a row's cells after
    the method and its epochs."""
    lines = ["| " + " | ".join(["method", "epochs", *header]) + " |", "|---" * (len(header) + 2) + "|"]
    for name, epochs in _order(rows):
        lines.append("| " + " | ".join([label(name), str(epochs), *cells(name, epochs, rows[(name, epochs)])]) + " |")
    return lines


def class_wise(paths: list[str]) -> str:
    rows, original = _rows(paths)

    def cells(name, epochs, r):
        paper = PAPER_RESNET50.get(name)
        relearn = f">{r['relearn_steps']}" if r.get("relearn_capped") else _f(r.get("relearn_steps"), 0)
        return [_f(r["UA"]), _f(r["MIA_loss_logreg"]), _f(r["MIA_confidence_svc"]), _f(r["RA"]), _f(r["TA"]),
                _f(r.get("avg_gap")), _f(r.get("probe_forget_acc"), 1), relearn, _f(r.get("rte_s"), 1),
                f"{r.get('trainable_params', 0):,}", " / ".join(map(str, paper)) if paper and epochs == 10 else ""]

    lines = _table(rows, ["UA", "MIA (loss, LR)", "MIA (conf, SVC)", "RA", "TA", "Avg. Gap", "probe D_f",
                          "relearn steps", "RTE s/epoch", "trainable", "paper RN-50 @10: UA / MIA / RA / TA"], cells)
    lines += ["", f"The original: test {_f(original.get('test_acc'))}% ({_f(original.get('test_acc_tta'))}% with TTA), "
                  f"UA {_f(original.get('UA'))}, probe on held-out D_f {_f(original.get('probe_forget_acc'), 1)}."]
    return "\n".join(lines)


def random_forgetting(paths: list[str]) -> str:
    rows, original = _rows(paths)

    def cells(name, epochs, r):
        amun = AMUN_GAP.get(name)
        return [_f(100 - r["UA"]), _f(r["RA"]), _f(r["TA"]), _f(r["MIA_confidence_svc"]), _f(r["MIA_loss_logreg"]),
                _f(r.get("avg_gap")), _f(r.get("probe_forget_acc"), 1), _f(r.get("rte_s"), 1),
                _f(amun) if amun is not None and name != "retrain" else ""]

    lines = _table(rows, ["forget acc", "retain acc", "test acc", "MIA (conf, SVC)", "MIA (loss, LR)", "Avg. Gap",
                          "probe D_f", "RTE s/epoch", "AMUN Table 1 Avg. Gap"], cells)
    lines += ["", f"AMUN's Retrain (ResNet-18): forget / retain / test {' / '.join(map(str, AMUN_RETRAIN))}; "
                  f"ours (airbench): the Retrain row. The original: test {_f(original.get('test_acc'))}%."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--class-wise", nargs="*", default=[], help="results.json files of the class-wise runs")
    parser.add_argument("--random", nargs="*", default=[], help="results.json files of the random-10%% runs")
    args = parser.parse_args()
    parts = []
    if args.class_wise:
        parts += ["### Class-wise (one class)", "", class_wise(args.class_wise), ""]
    if args.random:
        parts += ["### Random 10%", "", random_forgetting(args.random), ""]
    print("\n".join(parts))


if __name__ == "__main__":
    main()
