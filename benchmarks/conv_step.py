"""One training step of a CNN, Keras/JAX against PyTorch, measured alternately.

    python benchmarks/conv_step.py --out benchmarks/results/conv-step-airbench.json
    python benchmarks/conv_step.py --model resnet50 --width 0.25 --batch 32 \
        --out benchmarks/results/conv-step-resnet50-cpu.json

Both frameworks train the same network from the same weights (``models.airbench`` and
``interop.torch_models.Airbench``: the testbed's network; or the CIFAR ResNets at a preset's width
and batch: the `cpu` preset's ResNet-50 is width 0.25, batch 32) on the same random batch: forward,
label-smoothed cross-entropy (0.2, as airbench), backward, SGD with Nesterov momentum 0.85 (the
time of a step does not depend on the weights or the labels). JAX: one jitted pure step
(``model.stateless_call``, optax, donated buffers), once with the package's XLA:CPU forms
(``models.cpu_ops``: oneDNN's convolutions when the ``cpu-kernels`` extra is installed) and once without (``cpu_ops.plain_forms``; ``--ablate``: also each lever alone
off); PyTorch: eager, channels_last,
``torch.set_num_threads`` = the cores, in a process of its own (two OpenMP runtimes in one process,
PyTorch's and oneDNN's, slow each other). Rounds rotate through the variants so that machine noise
hits all alike; the table gives each variant's median seconds per step and its ratio to PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import prunelora_keras  # noqa: F401
import jax
import keras
import numpy as np
import optax

from prunelora_keras.experiment.pipeline import device_description, versions
from prunelora_keras.models import cpu_ops
from prunelora_keras.models import resnet18, resnet50
from prunelora_keras.models.airbench import airbench

MOMENTUM, LABEL_SMOOTHING, LR = 0.85, 0.2, 0.01


def jax_step(model: keras.Model, x, y, classes: int):
    """A compiled pure SGD step over ``model`` (compiled now, so with the current ``cpu_ops`` forms)."""
    opt = optax.sgd(LR, momentum=MOMENTUM, nesterov=True)
    trainable = [jax.numpy.array(v.value, copy=True) for v in model.trainable_variables]  # donated below
    frozen = [jax.numpy.array(v.value, copy=True) for v in model.non_trainable_variables]

    def loss_fn(train, frozen, x, y):
        logits, frozen = model.stateless_call(train, frozen, x, training=True)
        labels = optax.smooth_labels(jax.nn.one_hot(y, classes), LABEL_SMOOTHING)
        return optax.softmax_cross_entropy(logits, labels).mean(), frozen

    def step(train, frozen, opt_state, x, y):
        (loss, frozen), grads = jax.value_and_grad(loss_fn, has_aux=True)(train, frozen, x, y)
        updates, opt_state = opt.update(grads, opt_state, train)
        return optax.apply_updates(train, updates), frozen, opt_state, loss

    state = [trainable, frozen, opt.init(trainable)]
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, x, y).compile()

    def run(x, y):
        state[0], state[1], state[2], loss = compiled(*state, x, y)
        return jax.block_until_ready(loss)

    return run


def build(name: str, width: float, widths: tuple[int, ...]):
    """(the Keras model, its PyTorch twin without weights)."""
    from prunelora_keras.interop import torch_models

    if name == "airbench":
        return airbench(10, (32, 32, 3), widths, seed=0), torch_models.Airbench(widths=widths)
    keras_build, torch_build = {"resnet50": (resnet50, torch_models.resnet50),
                                "resnet18": (resnet18, torch_models.resnet18)}[name]
    return keras_build(10, (32, 32, 3), width), torch_build(10, width)


def _torch_worker(conn, net, state: dict, x: np.ndarray, y: np.ndarray, threads: int) -> None:
    """PyTorch's side, in its own process: this one loads oneDNN and OpenMP for JAX, and two OpenMP
    runtimes in one process slow each other down. Runs ``n`` steps per request, answers their times."""
    import torch

    torch.set_num_threads(threads)
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    ty = torch.tensor(y)
    while (n := conn.recv()) > 0:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(net(tx), ty).backward()
            opt.step()
            times.append(time.perf_counter() - t)
        conn.send(times)


def torch_step(model: keras.Model, net, x, y, threads: int):
    """(run(n) -> n step times, close): PyTorch's step in a worker process (``_torch_worker``)."""
    import multiprocessing

    from prunelora_keras.interop.torch import keras_to_state_dict

    state = {k: v.numpy() for k, v in keras_to_state_dict(model).items()}
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_torch_worker, args=(child, net, state, x, y, threads), daemon=True)
    proc.start()

    def run(n: int) -> list[float]:
        parent.send(n)
        return parent.recv()

    def close():
        parent.send(0)
        proc.join(60)

    return run, close


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["airbench", "resnet50", "resnet18"], default="airbench")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--widths", default="64,256,256", help="airbench: the three groups' channels")
    p.add_argument("--width", type=float, default=1.0, help="the ResNets: channel multiplier")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    p.add_argument("--ablate", action="store_true", help="also time each lever alone turned off")
    p.add_argument("--out", required=True, help="JSON file; the markdown table goes next to it (.md)")
    args = p.parse_args(argv)
    import torch

    widths = tuple(int(w) for w in args.widths.split(","))
    threads = os.cpu_count() or 1
    model, net = build(args.model, args.width, widths)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)
    jx, jy = jax.numpy.asarray(x), jax.numpy.asarray(y)
    from prunelora_keras.models import onednn

    package = "keras/jax, package forms" + (" (oneDNN convolutions)" if onednn.enabled() else "")
    runs = {package: jax_step(model, jx, jy, 10)}
    if args.ablate:  # each lever alone off: what it is worth in the step
        if onednn.enabled():
            with cpu_ops.plain_forms(conv=False, max_pool=False, onednn=True):
                runs["keras/jax, XLA forms (no oneDNN)"] = jax_step(model, jx, jy, 10)
        with cpu_ops.plain_forms(max_pool=False):
            runs["keras/jax, lax convolutions"] = jax_step(model, jx, jy, 10)
        with cpu_ops.plain_forms(conv=False):
            runs["keras/jax, lax max-pools"] = jax_step(model, jx, jy, 10)
    with cpu_ops.plain_forms():
        runs["keras/jax, lax forms"] = jax_step(model, jx, jy, 10)
    for name, run in runs.items():  # compile and warm up
        t = time.perf_counter()
        run(jx, jy)
        print(f"{name}: first step {time.perf_counter() - t:.1f} s", flush=True)
    torch_run, torch_close = torch_step(model, net, x, y, threads)
    print(f"pytorch (channels_last): first step {torch_run(1)[0]:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in [*runs, "pytorch (channels_last)"]}
    for r in range(args.rounds):
        for name, run in runs.items():
            for _ in range(args.steps):
                t = time.perf_counter()
                run(jx, jy)
                times[name].append(time.perf_counter() - t)
        times["pytorch (channels_last)"] += torch_run(args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {np.median(v):.3f}" for n, v in times.items()),
              flush=True)
    torch_close()
    torch_s = float(np.median(times["pytorch (channels_last)"]))
    rows = [{"variant": n, "s_per_step": float(np.median(v)), "min_s": float(np.min(v)), "max_s": float(np.max(v)),
             "ratio_to_pytorch": float(np.median(v)) / torch_s} for n, v in times.items()]
    shape = widths if args.model == "airbench" else args.width
    result = {"model": args.model, "widths" if args.model == "airbench" else "width": shape, "batch": args.batch,
              "rounds": args.rounds, "steps": args.steps,
              "device": device_description(), "versions": versions(), "torch": torch.__version__, "threads": threads,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    lines = [f"{args.model} {shape}, batch {args.batch}, fp32, one SGD step; {result['device']}, "
             f"{threads} threads, keras {result['versions']['keras']} / jax {result['versions']['jax']} vs torch "
             f"{torch.__version__}, {result['date']}; median of {args.rounds} rounds x {args.steps} steps",
             "", "| variant | s/step (median) | min - max | vs PyTorch |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['s_per_step']:.3f} | {r['min_s']:.3f} - {r['max_s']:.3f} | "
              f"{r['ratio_to_pytorch']:.2f}x |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
