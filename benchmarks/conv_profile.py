"""Per-operation profile of CNN training on this CPU: XLA:CPU's forms, the package's, PyTorch's.

    python benchmarks/conv_profile.py --out benchmarks/results/conv-profile.json

For every convolution of the given models (at each model's batch), the forward, the input gradient
and the weight gradient, each timed three ways: XLA's own (``lax.conv_general_dilated`` and its
autodiff), the package's XLA forms (``FastConv2D.convolution_op`` without oneDNN: a matmul for 1x1,
the weight gradient by kernel taps where ``cpu_ops.conv_forms`` says so), oneDNN's through the FFI
library (``models.onednn``, where the ``cpu-kernels`` extra is installed), and PyTorch's
(``conv2d`` and ``aten.convolution_backward`` with one output at a time, channels_last). Then the
airbench network's max-pools, BatchNorms and GELUs, forward and backward together, as Keras on
XLA does them, as the package's layers do, and as PyTorch does. Each round times every variant in
turn (median of ``--calls`` calls) so machine noise hits all alike; the table gives the median over
rounds in milliseconds. The last section adds each operation's time over the model's layers
(``count`` x per-call) and names what holds the model back against PyTorch.
"""

from __future__ import annotations

import argparse
import collections
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
from prunelora_keras.models import cpu_ops, onednn, resnet18, resnet50
from prunelora_keras.models.airbench import airbench
from prunelora_keras.models.layers import FastConv2D

MODELS = {  # name: (builder, batch); the testbed network and the presets' ResNets
    "airbench": (lambda: airbench(10, (32, 32, 3), seed=0), 256),
    "resnet18-cpu10k": (lambda: resnet18(10, (32, 32, 3), 0.125), 128),
    "resnet50-cpu": (lambda: resnet50(10, (32, 32, 3), 0.25), 32),
}


def conv_shapes(model: keras.Model, batch: int) -> list[dict]:
    """Each distinct convolution of ``model``: input shape, kernel, strides, padding, layer count."""
    seen: dict[tuple, dict] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        shape = (batch, *layer.input.shape[1:])
        key = (shape, tuple(layer.kernel.shape), tuple(layer.strides), layer.padding)
        seen.setdefault(key, {"input": shape, "kernel": tuple(layer.kernel.shape), "strides": tuple(layer.strides),
                              "padding": layer.padding, "layers": []})["layers"].append(layer.name)
    return list(seen.values())


def _time(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def conv_variants(spec: dict, rng) -> dict:
    """name -> zero-argument callable running one form of one operation of this convolution."""
    import torch

    x = jnp.asarray(rng.normal(size=spec["input"]), jnp.float32)
    k = jnp.asarray(rng.normal(size=spec["kernel"]) * 0.1, jnp.float32)
    kh, kw, cin, cout = spec["kernel"]
    layer = FastConv2D(cout, (kh, kw), strides=spec["strides"], padding=spec["padding"], use_bias=False)
    layer.build(spec["input"])

    def lax_conv(x, k):
        return jax.lax.conv_general_dilated(x, k, spec["strides"], spec["padding"].upper(),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def package_conv(x, k):
        return layer.convolution_op(x, k)

    dy = jnp.asarray(rng.normal(size=jax.eval_shape(lax_conv, x, k).shape), jnp.float32)
    out = {}
    forms = {"xla": (lax_conv, {"conv": True, "max_pool": False}),  # lax's own, compiled as the layer would be
             "package": (package_conv, {"conv": False, "max_pool": False, "onednn": True})}  # XLA's forms
    if onednn.missing() is None and (kh, kw) != (1, 1):
        forms["onednn"] = (package_conv, {"conv": False, "max_pool": False})
    for form, (conv, switches) in forms.items():
        with cpu_ops.plain_forms(**switches):  # compiled here, so with these forms
            fwd = jax.jit(lambda x, k, conv=conv: conv(x, k)).lower(x, k).compile()  # a new function: jit's
            # trace cache keys on the function, and the same conv under other forms must be traced again
            dx = jax.jit(lambda x, k, dy, conv=conv: jax.vjp(lambda v: conv(v, k), x)[1](dy)[0]).lower(x, k, dy).compile()
            dw = jax.jit(lambda x, k, dy, conv=conv: jax.vjp(lambda v: conv(x, v), k)[1](dy)[0]).lower(x, k, dy).compile()
        out[("forward", form)] = lambda fwd=fwd: jax.block_until_ready(fwd(x, k))
        out[("input grad", form)] = lambda dx=dx: jax.block_until_ready(dx(x, k, dy))
        out[("weight grad", form)] = lambda dw=dw: jax.block_until_ready(dw(x, k, dy))
    cl = torch.channels_last
    tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    tw = torch.tensor(np.asarray(k)).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    tdy = torch.tensor(np.asarray(dy)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    pad = [d // 2 for d in (kh, kw)] if spec["padding"] == "same" else [0, 0]
    stride = list(spec["strides"])

    def torch_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(tdy, tx, tw, None, stride, pad, [1, 1], False, [0, 0], 1,
                                                            mask)

    def torch_forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)

    out[("forward", "pytorch")] = torch_forward
    out[("input grad", "pytorch")] = torch_backward([True, False, False])
    out[("weight grad", "pytorch")] = torch_backward([False, True, False])
    if spec["input"][1:3] == (32, 32) and cin == 3:  # the stem reads the images: no input gradient needed
        for key in [key for key in out if key[0] == "input grad"]:
            del out[key]
    return out


def elementwise_variants(model: keras.Model, batch: int, rng) -> list[tuple[dict, dict]]:
    """(spec, variants) for the model's max-pools, BatchNorms and GELUs: forward and backward together."""
    import torch

    rows, seen = [], {}
    for layer in model.layers:
        kind = ("max-pool" if isinstance(layer, keras.layers.MaxPooling2D) else
                "batchnorm" if isinstance(layer, keras.layers.BatchNormalization) else
                "gelu" if isinstance(layer, keras.layers.Activation) and "gelu" in layer.name else None)
        if kind is None:
            continue
        shape = (batch, *layer.input.shape[1:])
        key = (kind, shape, getattr(layer, "pool_size", None))
        if key in seen:
            seen[key]["layers"].append(layer.name)
            continue
        spec = seen[key] = {"op": kind, "input": shape, "layers": [layer.name]}
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        tx.requires_grad_(True)
        variants = {}
        if kind == "max-pool":
            pool = tuple(layer.pool_size)
            plain = keras.layers.MaxPooling2D(pool)
            for form, fn in (("xla", lambda v: plain(v)), ("package", lambda v: cpu_ops.max_pool(v, pool))):
                g = jax.jit(jax.grad(lambda v, fn=fn: jnp.sum(fn(v) ** 2)))
                variants[form] = lambda g=g: jax.block_until_ready(g(x))
            tfn = lambda: torch.nn.functional.max_pool2d(tx, pool)
        elif kind == "batchnorm":
            bn = keras.layers.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon, scale=layer.scale)
            bn.build(shape)
            tv, ntv = [v.value for v in bn.trainable_variables], [v.value for v in bn.non_trainable_variables]
            g = jax.jit(jax.grad(lambda v, tv: jnp.sum(bn.stateless_call(tv, ntv, v, training=True)[0] ** 2),
                                 argnums=(0, 1)))
            variants["xla"] = lambda g=g: jax.block_until_ready(g(x, tv))
            tbn = torch.nn.BatchNorm2d(shape[-1], eps=layer.epsilon).to(memory_format=torch.channels_last).train()
            tfn = lambda: tbn(tx)
        else:
            g = jax.jit(jax.grad(lambda v: jnp.sum(keras.activations.gelu(v, approximate=False) ** 2)))
            variants["xla"] = lambda g=g: jax.block_until_ready(g(x))
            tfn = lambda: torch.nn.functional.gelu(tx)

        def torch_fb(tfn=tfn):
            out = tfn()
            torch.autograd.grad((out ** 2).sum(), tx)

        variants["pytorch"] = torch_fb
        rows.append((spec, variants))
    return rows


def matmul_variants(rng) -> list[tuple[dict, dict]]:
    """(spec, variants) for the bfloat16 question: one matrix product in float32, in bfloat16 (bfloat16
    out, and float32 accumulation, the form that reaches AMX), PyTorch's; and the im2col rearrangement
    a matmul-form convolution needs, alone, in both dtypes."""
    import torch

    rows = []
    for m, k, n in ((2048, 2048, 2048), (12544, 2304, 256)):  # square; airbench's 256->256 @7x7 as im2col
        a, b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
        variants = {}
        for label, dtype, out in (("fp32", jnp.float32, None), ("bf16", jnp.bfloat16, None),
                                  ("bf16->fp32", jnp.bfloat16, jnp.float32)):
            ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
            f = jax.jit(lambda x, y, out=out: jax.lax.dot_general(x, y, (((1,), (0,)), ((), ())),
                                                                   preferred_element_type=out))
            variants[f"xla {label}"] = lambda f=f, ja=ja, jb=jb: jax.block_until_ready(f(ja, jb))
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            ta, tb = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
            variants[f"pytorch {label}"] = lambda ta=ta, tb=tb: ta @ tb
        rows.append(({"op": "matmul", "input": (m, k, n), "layers": ["-"], "gflop": 2 * m * k * n / 1e9}, variants))
    x = rng.normal(size=(256, 7, 7, 256))
    variants = {}
    for label, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        jx = jnp.asarray(x, dtype)
        f = jax.jit(lambda v: cpu_ops._im2col(v, jnp.zeros((3, 3, 256, 1), v.dtype), (1, 1), ((1, 1), (1, 1))))
        variants[f"xla {label}"] = lambda f=f, jx=jx: jax.block_until_ready(f(jx))
    rows.append(({"op": "im2col (3x3, into 1 channel)", "input": (256, 7, 7, 256), "layers": ["-"]}, variants))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3, help="calls per variant per round (the median is kept)")
    p.add_argument("--no-matmul", dest="matmul", action="store_false",
                   help="skip the matmul / bfloat16 section")
    p.add_argument("--out", required=True, help="JSON file; the markdown table goes next to it (.md)")
    args = p.parse_args(argv)
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    entries = []  # (model, section, spec, {form: callable})
    for name in args.models.split(","):
        build, batch = MODELS[name]
        model = build()
        for spec in conv_shapes(model, batch):
            variants = conv_variants(spec, rng)
            for op in ("forward", "input grad", "weight grad"):
                forms = {form: fn for (o, form), fn in variants.items() if o == op}
                if forms:
                    entries.append((name, "conv", {**spec, "op": op}, forms))
        if name == "airbench":
            entries += [(name, "other", spec, forms) for spec, forms in elementwise_variants(model, batch, rng)]
    if args.matmul:
        entries += [("matmul", "matmul", spec, forms) for spec, forms in matmul_variants(rng)]
    times = [collections.defaultdict(list) for _ in entries]
    for r in range(args.rounds):
        for i, (_, _, _, forms) in enumerate(entries):
            for form, fn in forms.items():
                times[i][form].append(_time(fn, args.calls))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for (model, section, spec, _), t in zip(entries, times):
        rows.append({"model": model, "section": section, **{k: v for k, v in spec.items()},
                     "count": len(spec["layers"]), "ms": {form: float(np.median(v)) for form, v in t.items()}})
    result = {"device": device_description(), "versions": versions(), "torch": torch.__version__, "threads": threads,
              "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "calls": args.calls, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=list))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _shape(row) -> str:
    n, h, w, c = row["input"]
    if row["section"] != "conv":
        return f"{h}x{w}x{c}"
    kh, kw, _, co = row["kernel"]
    s = "" if tuple(row["strides"]) == (1, 1) else f" s{row['strides'][0]}"
    return f"{kh}x{kw} {c}->{co} @{h}x{w}{s}"


def markdown(result: dict) -> str:
    lines = [f"{result['device']}, {result['threads']} threads, keras {result['versions']['keras']} / jax "
             f"{result['versions']['jax']} vs torch {result['torch']}, {result['date']}; ms per call, median of "
             f"{result['rounds']} alternating rounds (each the median of {result['calls']} calls)", ""]
    for model in dict.fromkeys(r["model"] for r in result["rows"] if r["section"] != "matmul"):
        rows = [r for r in result["rows"] if r["model"] == model]
        batch = rows[0]["input"][0]
        lines += [f"**{model}** (batch {batch})", "",
                  "| operation | shape | layers | XLA | XLA forms | oneDNN | PyTorch | best / PyTorch |",
                  "|---|---|---|---|---|---|---|---|"]
        totals = collections.defaultdict(lambda: [0.0, 0.0])
        for r in rows:
            ms = r["ms"]
            package = min([ms[form] for form in ("package", "onednn") if form in ms] or [ms["xla"]])
            cells = [f"{ms[form]:.1f}" if form in ms else "" for form in ("xla", "package", "onednn", "pytorch")]
            lines.append(f"| {r['op']} | {_shape(r)} | {r['count']} | {' | '.join(cells)} | {package / ms['pytorch']:.2f} |")
            totals[r["op"]][0] += r["count"] * package
            totals[r["op"]][1] += r["count"] * ms["pytorch"]
        lines += ["", "| operation, all layers | best form ms | PyTorch ms | ratio | excess ms |", "|---|---|---|---|---|"]
        for op, (ours, theirs) in sorted(totals.items(), key=lambda kv: kv[1][1] - kv[1][0]):
            lines.append(f"| {op} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} | {ours - theirs:+.0f} |")
        ours, theirs = (sum(v[i] for v in totals.values()) for i in (0, 1))
        lines += [f"| all | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} | {ours - theirs:+.0f} |", ""]
    matmuls = [r for r in result["rows"] if r["section"] == "matmul"]
    if matmuls:
        lines += ["**bfloat16**: one matrix product (GFLOP/s), and the im2col rearrangement alone (ms)", "",
                  "| operation | shape | variant: value |", "|---|---|---|"]
        for r in matmuls:
            if "gflop" in r:
                cells = [f"{form} {r['gflop'] / ms * 1e3:.0f}" for form, ms in r["ms"].items()]
            else:
                cells = [f"{form} {ms:.1f} ms" for form, ms in r["ms"].items()]
            lines.append(f"| {r['op']} | {'x'.join(str(v) for v in r['input'])} | {', '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
