"""Side by side with PyTorch: the same original model, data, seed and paradigms in both frameworks.

    python benchmarks/compare.py --model vit --preset cpu --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --out benchmarks/results/compare-vit-cpu.json

The original model comes from the Keras pipeline (trained, or reused from ``--run-dir``, by
default ``runs/cpu-<model>``, the folder ``benchmarks/run_cpu_preset.sh`` fills), is converted
to a PyTorch state dict, and each paradigm then runs in Keras (this process) and in PyTorch
(``benchmarks/torch_reference.py``, a subprocess), one after the other per paradigm so machine
noise hits both alike. Seconds per epoch are medians over the epochs. Writes JSON (``rows``: one
per paradigm at the largest epoch count) and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import prunelora_keras  # noqa: F401
from prunelora_keras.experiment import pipeline
from prunelora_keras.experiment.config import build_config
from prunelora_keras.interop.torch import keras_to_state_dict

METRICS = ("UA", "MIA_loss_logreg", "MIA_confidence_svc", "RA", "TA")
HERE = Path(__file__).resolve().parent


def markdown(result: dict) -> str:
    lines = [f"{result['model']} ({result['preset']} preset), {result['epochs']} epochs, device {result['device']}, "
             f"keras {result['versions']['keras']} / jax {result['versions']['jax']} vs torch {result['torch']}",
             "",
             "| paradigm | " + " | ".join(f"{m} keras / torch (diff)" for m in METRICS)
             + " | s/epoch keras | s/epoch torch | ratio | peak RSS GB keras / torch |",
             "|---" * (len(METRICS) + 5) + "|"]
    for r in result["rows"]:
        cells = [f"{r['keras_' + m]:.2f} / {r['torch_' + m]:.2f} ({r['keras_' + m] - r['torch_' + m]:+.2f})"
                 for m in METRICS]
        label = r["paradigm"] + (" (prefix cached)" if r.get("keras_prefix_cache") else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['keras_rte_s']:.2f} | {r['torch_rte_s']:.2f}"
                     f" | {r['ratio']:.2f} | {r['keras_peak_mem_bytes'] / 1e9:.2f} / {r['torch_peak_mem_bytes'] / 1e9:.2f} |")
    if any(r.get("keras_prefix_cache") for r in result["rows"]):
        lines += ["", "(prefix cached): Keras trained only the layers after the frozen prefix, on features computed "
                  "once (unlearn.prefix_cache = auto, exact); PyTorch runs the whole model every step."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Keras/JAX vs PyTorch on the same unlearning runs")
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--data-dir", default="")
    p.add_argument("--paradigms", default="finetune,pruned,lora,pruned_lora")
    p.add_argument("--run-dir", help="run folder holding (or to hold) the original model's checkpoint")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--out", required=True, help="JSON file; the markdown table goes next to it (.md)")
    args = p.parse_args(argv)
    overrides = {"data.data_dir": args.data_dir} if args.data_dir else {}
    cfg = build_config(args.model, args.preset, None, overrides, args.sets)
    run_dir = Path(args.run_dir or f"runs/{args.preset}-{args.model}")
    ds, split = pipeline.load_data(cfg)
    original_model, original = pipeline.train_stage("original", cfg, cfg.pretrain, split.train, ds, split, run_dir,
                                                    pipeline.data_identity(cfg))
    import torch

    rows = []
    torch_version = ""
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / "original.pt"
        torch.save(keras_to_state_dict(original_model), state_path)
        for name in args.paradigms.split(","):
            keras_rows, _ = pipeline.run_paradigm(name, cfg, original.checkpoint, ds, split)
            torch_json = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / "torch_reference.py"), "--model", args.model, "--preset", args.preset,
                   "--data-dir", args.data_dir, "--state-dict", str(state_path), "--paradigms", name,
                   "--out", str(torch_json)] + [a for s in args.sets for a in ("--set", s)]
            subprocess.run(cmd, check=True)
            torch_out = json.loads(torch_json.read_text())
            torch_version = torch_out["torch"]
            k, t = keras_rows[-1], torch_out["rows"][-1]
            row = {"paradigm": name, "epochs": k["epochs"], "keras_rte_s": k["rte_median_s"],
                   "torch_rte_s": t["rte_s"], "ratio": k["rte_median_s"] / t["rte_s"],
                   "keras_compile_s": k["compile_s"], "keras_peak_mem_bytes": k["peak_mem_bytes"],
                   "torch_peak_mem_bytes": t["peak_mem_bytes"], "mem_kind": "host_rss",
                   "keras_trainable_params": k["trainable_params"], "torch_trainable_params": t["trainable_params"],
                   "keras_prefix_cache": bool(k.get("prefix_cache", False)), "keras_cache_s": k.get("cache_s", 0.0)}
            for m in METRICS:
                row[f"keras_{m}"], row[f"torch_{m}"] = k[m], t[m]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"model": args.model, "preset": args.preset, "epochs": max(cfg.unlearn.epochs),
              "device": pipeline.device_description(), "versions": pipeline.versions(), "torch": torch_version,
              "config": cfg.to_dict(), "original": original.accuracies, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
