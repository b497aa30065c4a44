"""Seconds per training epoch of the command over process x device layouts of one machine.

    python benchmarks/multiprocess_scaling.py --model vit --layouts 1x1,1x4,2x2,4x1 \
        --out benchmarks/results/multiprocess-scaling-vit-cpu

Each layout P x D runs the same command (quick preset, pretraining only: ``--paradigms retrain``
with the Retrain stage cut to one epoch) as P processes joined through ``jax.distributed`` (gloo
on CPUs) with D simulated CPU devices each (``--xla_force_host_platform_device_count``), so every
layout but 1x1 trains data-parallel on a mesh of P x D devices. Reported per layout: the median
seconds of the pretraining epochs after the first (compilation apart), its ratio to one device
(1 x 1), the job's wall time, and whether the final accuracies match the 1 x 4 layout's.

On a machine with several cores per process or real accelerators the ratio shows the speed-up.
On this 2-core CPU every layout shares the same two cores, so the ratio shows the cost of
splitting the batch and of the all-reduce (in-process, then across processes through gloo),
not a speed-up. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(processes: int, devices: int, args: list[str], out: Path) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("KERAS_BACKEND", None)
    base = [sys.executable, "-m", "prunelora_keras.run", *args, "--out", str(out)]
    port = free_port()
    commands = [base if processes == 1 else
                base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
                for i in range(processes)]
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"{processes}x{devices} failed:\n{err[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    history = results["stages"]["original"]["history"]
    steady = [h["seconds"] for h in history[1:]]
    return {"layout": f"{processes}x{devices}", "processes": processes, "devices_per_process": devices,
            "devices": results["devices"], "epoch_s": float(np.median(steady)), "epoch_s_all": steady,
            "compile_s": history[0]["compile_s"], "wall_s": wall, "accuracies": results["stages"]["original"]["accuracies"],
            "losses": [h["loss"] for h in history]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit")
    p.add_argument("--preset", default="quick")
    p.add_argument("--layouts", default="1x1,1x4,2x2,4x1")
    p.add_argument("--epochs", type=int, default=4, help="pretraining epochs (the first is not timed)")
    p.add_argument("--set", action="append", default=[], dest="sets", help="more --set KEY=VALUE for the command")
    p.add_argument("--out", required=True, help="path prefix: writes <out>.json and <out>.md")
    a = p.parse_args(argv)
    args = ["--model", a.model, "--preset", a.preset, "--paradigms", "retrain", "--epochs", "1",
            "--set", f"pretrain.epochs={a.epochs}", "--set", "retrain.epochs=1"]
    for s in a.sets:
        args += ["--set", s]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in a.layouts.split(","):
            processes, devices = (int(v) for v in layout.split("x"))
            row = run_layout(processes, devices, args, Path(tmp) / layout)
            rows.append(row)
            print(f"{layout}: {row['epoch_s']:.2f} s/epoch (wall {row['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    one = next((r["epoch_s"] for r in rows if r["layout"] == "1x1"), None)
    ref = next((r for r in rows if r["layout"] == "1x4"), None)
    for r in rows:
        r["ratio_to_one_device"] = None if one is None else r["epoch_s"] / one
        r["same_accuracies_as_1x4"] = None if ref is None else all(
            abs(r["accuracies"][k] - v) <= 0.5 for k, v in ref["accuracies"].items())
    import jax
    import platform

    meta = {"model": a.model, "preset": a.preset, "command": args, "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores {platform.machine()}", "jax": jax.__version__}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"{a.model}, {a.preset} preset, pretraining epochs 2-{a.epochs} (median), {meta['machine']}, "
             f"jax {meta['jax']}, {meta['date']}", "",
             "| processes x devices | devices in the mesh | s/epoch | ratio to 1 device | compile s | job wall s | "
             "accuracies = 1x4 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio_to_one_device"] is None else f"{r['ratio_to_one_device']:.2f}"
        same = "-" if r["same_accuracies_as_1x4"] is None else ("yes" if r["same_accuracies_as_1x4"] else "no")
        lines.append(f"| {r['layout']} | {r['devices']} | {r['epoch_s']:.2f} | {ratio} | {r['compile_s']:.1f} | "
                     f"{r['wall_s']:.0f} | {same} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
