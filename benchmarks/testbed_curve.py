"""The testbed's accuracy against epochs: airbench94 trained with the `testbed` preset's recipe for E epochs
(the triangle rate and the lookahead scaled to the E-epoch run), its plain and TTA test accuracy.

The original model of the command, trained by the command's own stage (``experiment.stages.train_stage``):
resumable from its last epoch, reused when finished (its key is the recipe's), so the 10-epoch point is the
command's original itself when the run folder holds it.

    python benchmarks/testbed_curve.py --data-dir ../shared/data/cifar10-jpeg.tar.gz --epochs 15 \
        --out runs/testbed/curve-15 --json benchmarks/results/testbed-curve-15.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

from prunelora_keras.experiment.config import build_config  # noqa: E402
from prunelora_keras.experiment.pipeline import load_data  # noqa: E402
from prunelora_keras.experiment.stages import data_identity, train_stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 (a folder or an image-folder archive)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--set", action="append", default=[], help="more config keys, e.g. model.widths=64,384,384")
    parser.add_argument("--out", required=True, help="run folder (its checkpoints/ holds the model)")
    parser.add_argument("--json", required=True, help="where the numbers go")
    args = parser.parse_args()
    cfg = build_config("airbench", "testbed", overrides={"data.data_dir": args.data_dir},
                       sets=[f"pretrain.epochs={args.epochs}", *args.set])
    ds, split = load_data(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _, result = train_stage("original", cfg, cfg.pretrain, split.train, ds, split, out, data_identity(cfg))
    train_s = sum(h["seconds"] + (h.get("compile_s") or 0) for h in result.history)
    record = {"epochs": args.epochs, "sets": args.set, "accuracies": result.accuracies,
              "train_seconds": train_s, "wall_seconds": time.perf_counter() - start, "reused": result.reused,
              "history": result.history, "recipe": asdict(cfg.pretrain), "model": asdict(cfg.model),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    Path(args.json).write_text(json.dumps(record, indent=1))
    a = result.accuracies
    print(f"{args.epochs} epochs: test {a['test']:.2f}% ({a.get('test_tta', float('nan')):.2f}% with TTA), train "
          f"{a['train']:.2f}%, {train_s / 60:.1f} min of training")


if __name__ == "__main__":
    main()
