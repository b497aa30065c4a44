"""Depthwise convolutions on this CPU: XLA's grouped convolution, the package's taps, PyTorch's.

    python benchmarks/depthwise_profile.py --out benchmarks/results/depthwise-profile.json

For every ``DepthwiseConv2D`` of keras.applications' MobileNetV3Small and EfficientNetB0 at 32x32
inputs (batch 64, as the README's example and the API tests train them), one training pass of the
layer alone (forward, input and weight gradients) three ways: Keras's own on JAX
(``lax.conv_general_dilated`` with ``feature_group_count``, what ``DepthwiseConv2D`` computes),
``cpu_ops.depthwise_conv2d`` (what ``FastDepthwiseConv2D`` computes on XLA:CPU) and, where torch is
installed, PyTorch's ``conv2d`` with ``groups`` (channels_last). Each round times every variant in
turn (median of ``--calls`` calls), the table the median over rounds in milliseconds, and a total
per model over its layers. Results: the JSON file and a markdown table beside it (.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import prunelora_keras  # noqa: F401
import jax
import jax.numpy as jnp
import keras
import numpy as np

from prunelora_keras.experiment.pipeline import device_description, versions
from prunelora_keras.models import cpu_ops

from conv_profile import _time  # the same timing: a warm-up call, then the median of `calls`

MODELS = {"mobilenetv3small": keras.applications.MobileNetV3Small, "efficientnetb0": keras.applications.EfficientNetB0}


def depthwise_shapes(name: str, batch: int) -> list[dict]:
    """The distinct (input, kernel, strides, padding) of the model's depthwise layers, with their count."""
    model = MODELS[name](weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    rows: dict[tuple, dict] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            key = ((batch, *layer.input.shape[1:]), tuple(layer.kernel.shape), tuple(layer.strides), layer.padding)
            rows.setdefault(key, {"input": key[0], "kernel": key[1], "strides": key[2], "padding": key[3], "count": 0})
            rows[key]["count"] += 1
    return list(rows.values())


def variants(spec: dict, rng) -> dict:
    """{variant: zero-argument function running one forward and backward pass} for one shape."""
    shape, kernel_shape, strides, padding = spec["input"], spec["kernel"], spec["strides"], spec["padding"]
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    channels, multiplier = kernel_shape[2:]

    def keras_conv(x, k):
        return jax.lax.conv_general_dilated(x, k.reshape(*kernel_shape[:2], 1, channels * multiplier), strides,
                                            padding.upper(), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=channels)

    def taps(x, k):
        return cpu_ops.depthwise_conv2d(x, k, strides, padding)

    out = {}
    for name, conv in (("keras (lax)", keras_conv), ("package (taps)", taps)):
        step = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
        out[name] = lambda step=step: jax.block_until_ready(step(x, k))
    try:
        import torch
    except ImportError:
        return out
    tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    tk = torch.tensor(np.asarray(k)).permute(2, 3, 0, 1).reshape(channels * multiplier, 1, *kernel_shape[:2])
    tk = tk.contiguous().requires_grad_()
    pad = "same" if padding == "same" and strides == (1, 1) else 0
    if padding == "same" and strides != (1, 1):  # lax's "same" for strides > 1: pad explicitly, as Keras does
        pads = [cpu_ops.explicit_padding(shape[a + 1], kernel_shape[a], strides[a], 1, padding) for a in (0, 1)]
        tx_in = lambda: torch.nn.functional.pad(tx, (*pads[1], *pads[0]))  # noqa: E731
    else:
        tx_in = lambda: tx  # noqa: E731

    def torch_pass():
        y = torch.nn.functional.conv2d(tx_in(), tk, stride=strides, padding=pad, groups=channels)
        gx, gk = torch.autograd.grad((y ** 2).sum(), (tx, tk))
        return gx, gk

    out["pytorch"] = torch_pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3, help="calls per variant per round (the median is kept)")
    p.add_argument("--out", required=True, help="JSON file; the markdown table goes next to it (.md)")
    args = p.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)  # as XLA: every core
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    rows = []
    for model in args.models.split(","):
        for spec in depthwise_shapes(model, args.batch):
            fns = variants(spec, rng)
            times = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    times[name].append(_time(fn, args.calls))
            rows.append({"model": model, **spec, "ms": {n: float(np.median(t)) for n, t in times.items()}})
            print(model, spec["input"], spec["kernel"], spec["strides"],
                  {n: round(v, 2) for n, v in rows[-1]["ms"].items()}, flush=True)
    result = {"machine": device_description(), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
              "batch": args.batch, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    names = list(result["rows"][0]["ms"]) if result["rows"] else []
    lines = [f"Depthwise convolutions, forward and both gradients, ms per call (batch {result['batch']}; "
             f"{result['machine']}, {result['date']})", "",
             "| model | input | kernel | strides | layers | " + " | ".join(names) + " | taps speed-up |",
             "|---|---|---|---|---|" + "---|" * len(names) + "---|"]
    totals: dict[str, dict[str, float]] = {}
    for r in result["rows"]:
        ms = r["ms"]
        lines.append(f"| {r['model']} | {tuple(r['input'][1:])} | {tuple(r['kernel'][:2])} x {r['kernel'][3]} | "
                     f"{tuple(r['strides'])} | {r['count']} | " + " | ".join(f"{ms[n]:.2f}" for n in names)
                     + f" | {ms['keras (lax)'] / ms['package (taps)']:.1f}x |")
        for n in names:
            totals.setdefault(r["model"], {}).setdefault(n, 0.0)
            totals[r["model"]][n] += r["count"] * ms[n]
    for model, t in totals.items():
        lines.append(f"| **{model}, all layers** | | | | | " + " | ".join(f"**{t[n]:.1f}**" for n in names)
                     + f" | **{t['keras (lax)'] / t['package (taps)']:.1f}x** |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
