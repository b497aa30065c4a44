"""How much a paradigm's metrics move with the random stream alone, in each framework.

    python benchmarks/seed_spread.py --model vit --preset cpu --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --run-dir runs/cpu-vit --paradigm finetune --seeds 0,1,2 --out benchmarks/results/seed_spread-vit.json

The data split and the original model stay those of the preset's seed; only the unlearning run's
seed changes (batch order, dropout, the MIA's draws), in Keras and in the PyTorch reference.
compare.py's per-paradigm differences between the frameworks are judged against this spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

import prunelora_keras  # noqa: F401
from prunelora_keras.experiment import pipeline
from prunelora_keras.experiment.config import build_config
from prunelora_keras.interop.torch import keras_to_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_reference  # noqa: E402

METRICS = ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--data-dir", default="")
    p.add_argument("--run-dir", required=True, help="run folder holding the original model's checkpoint")
    p.add_argument("--paradigm", default="finetune")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    overrides = {"data.data_dir": a.data_dir} if a.data_dir else {}
    cfg = build_config(a.model, a.preset, None, overrides, a.sets)
    ds, split = pipeline.load_data(cfg)
    original_model, original = pipeline.train_stage("original", cfg, cfg.pretrain, split.train, ds, split,
                                                    Path(a.run_dir), pipeline.data_identity(cfg))
    state_dict = keras_to_state_dict(original_model)
    runs = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        run_cfg = dataclasses.replace(cfg, seed=seed)
        keras_rows, _ = pipeline.run_paradigm(a.paradigm, run_cfg, original.checkpoint, ds, split)
        torch_rows = torch_reference.run_paradigm(a.paradigm, state_dict, run_cfg, ds, split)
        for framework, rows in (("keras", keras_rows), ("torch", torch_rows)):
            for r in rows:
                runs.append({"framework": framework, "seed": seed, "epochs": r["epochs"], **{m: r[m] for m in METRICS}})
        print(json.dumps(runs[-1]), flush=True)
    summary = []
    for framework in ("keras", "torch"):
        for e in sorted({r["epochs"] for r in runs}):
            sel = [r for r in runs if r["framework"] == framework and r["epochs"] == e]
            summary.append({"framework": framework, "epochs": e, "n": len(sel),
                            **{m: [float(np.mean([r[m] for r in sel])), float(np.std([r[m] for r in sel]))]
                               for m in METRICS}})
    out = Path(a.out)
    out.write_text(json.dumps({"model": a.model, "preset": a.preset, "paradigm": a.paradigm, "runs": runs,
                               "summary": summary}, indent=2))
    lines = [f"{a.model} {a.paradigm}, unlearning seeds {a.seeds} (mean ± std over seeds; per-seed values in the JSON)",
             "", "| framework | epochs | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for s in summary:
        lines.append(f"| {s['framework']} | {s['epochs']} | "
                     + " | ".join(f"{s[m][0]:.2f} ± {s[m][1]:.2f}" for m in METRICS) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
