"""XLA:CPU options against the training step's time: each flag set in a fresh process.

    python benchmarks/xla_cpu_flags.py --models vit,resnet50 --out benchmarks/results/xla_cpu_flags.json
    python benchmarks/xla_cpu_flags.py --models airbench --out benchmarks/results/xla_cpu_flags-airbench.json

Runs ``epoch_time.py`` (finetune, synthetic images, the `cpu` preset's model and batch; for
``airbench``: ``conv_step.py``, the airbench94 network's SGD step at batch 256 with the package's
forms) once per flag set with ``XLA_FLAGS`` set, and tabulates seconds per step. The candidates route
dots and convolutions to XNNPACK/YNNPACK or oneDNN instead of XLA's own emitters and Eigen, or change
XLA:CPU's vector width and scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAG_SETS = {
    "default": "",
    "ynnpack dot+conv": "--xla_cpu_experimental_ynn_fusion_type=dot,individual_convolution",
    "xnnpack dot+conv": "--xla_cpu_experimental_xnn_fusion_type=dot,individual_convolution",
    "onednn dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "use_onednn": "--xla_cpu_use_onednn=true",
    "onednn custom call": "--xla_cpu_experimental_onednn_custom_call=true",
    "512-bit vectors": "--xla_cpu_prefer_vector_width=512",
    "concurrency scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit,resnet50")
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--sets", default=",".join(FLAG_SETS))
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            for name in a.sets.split(","):
                out = Path(tmp) / f"{model}-{len(rows)}.json"
                env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name]}
                if model == "airbench":
                    cmd = [sys.executable, str(HERE / "conv_step.py"), "--rounds", "3", "--steps", "2", "--out", str(out)]
                else:
                    cmd = [sys.executable, str(HERE / "epoch_time.py"), "--model", model, "--preset", "cpu",
                           "--images", str(a.images), "--epochs", "3", "--paradigms", "finetune", "--cache", "off",
                           "--out", str(out)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    rows.append({"model": model, "flags": name, "error": proc.stderr.strip().splitlines()[-1]})
                elif model == "airbench":
                    r = json.loads(out.read_text())["rows"]
                    rows.append({"model": model, "flags": name, "xla_flags": FLAG_SETS[name],
                                 "step_s": r[0]["s_per_step"], "pytorch_step_s": r[-1]["s_per_step"], "compile_s": 0.0})
                else:
                    r = json.loads(out.read_text())["rows"][0]
                    rows.append({"model": model, "flags": name, "xla_flags": FLAG_SETS[name],
                                 "step_s": r["step_s_median"], "compile_s": r["compile_s"]})
                print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps({"rows": rows}, indent=2))
    print("| model | XLA_FLAGS | s/step | compile s |\n|---|---|---|---|")
    for r in rows:
        cells = f"{r['step_s']:.4f} | {r['compile_s']:.1f}" if "step_s" in r else f"error: {r['error']} | -"
        print(f"| {r['model']} | {r['flags']} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
