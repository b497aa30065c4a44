"""Pools against sequential training: K models as one pool (each mode) vs K single-model runs one
after another, in one process, beside PyTorch (K models one after another; torch.func's
stack_module_state + vmap where it applies).

The workload is the many-model evaluation's largest: a Retrain pool (models from scratch on D_r).
Every framework trains the same architecture on the same images, batch and number of steps, with
Adam and no augmentation or clipping (so that torch.func can batch the same step). The time is one
steady-state epoch of all K models (the second; compilation excluded), the mean over ``--repeat``.

    python benchmarks/ensemble.py --model vit --preset quick --k 1,4,16,64 --out F.json

F.json: {"rows": [{"k", "sequential_s", "vmapped_s", "map_s", "loop_s", "pool_s", "pool_mode",
"speedup" (sequential / pool), "vmap_speedup", "torch_sequential_s", "torch_vmap_s",
"pool_bytes_estimate"}], "machine", "versions", ...}.

PyTorch is optional (the ``torch`` extra): without it the PyTorch columns say ``skipped`` with a
note, and the JAX columns are measured as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import prunelora_keras  # noqa: F401  (jax backend before keras)
import jax
import keras

from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.batches import num_batches
from prunelora_keras.training.pool_trainer import choose_mode
from prunelora_keras.models import build_model
from prunelora_keras.experiment.pipeline import load_data
from prunelora_keras.api.pools import pool_bytes, scratch_pool
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.training.bn import set_bn_policy


TORCH_MISSING = "skipped: PyTorch is not installed (pip install torch==2.13.0 && pip install -e '.[torch]')"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def torch_or_none():
    """The torch module, or None where it is not installed: the PyTorch columns are then skipped."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def jax_sequential(cfg, ds, x, y, seeds) -> float:
    """Seconds of one steady-state epoch of K single-model runs, one after another (one compiled
    step shared by all, as equal trainers share it)."""
    total = 0.0
    steps = num_batches(len(y), cfg.data.batch_size) * cfg.retrain.epochs
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = build_model(cfg.model, ds.num_classes, ds.image_shape)
        set_bn_policy(model, cfg.retrain.bn)
        trainer = Trainer(model, make_optimizer(cfg.retrain, steps), num_classes=ds.num_classes, preprocess=ds.preprocess, seed=seed,
                          share_key="bench-ensemble", verbose=False)
        history = trainer.fit(x, y, 2, cfg.data.batch_size)
        total += history[1].seconds
    return total


def jax_pool(cfg, ds, x, y, seeds, mode) -> tuple[float, str]:
    pool = scratch_pool(lambda s: build_model(cfg.model, ds.num_classes, ds.image_shape), cfg.retrain, x, y,
                        cfg.data.batch_size, ds.num_classes, ds.preprocess, seeds, mode=mode, verbose=False)
    history = pool.fit(2)
    return history[1].seconds, pool.mode


def torch_models(cfg, ds, k):
    import torch

    from prunelora_keras.interop.torch_models import build_torch_model

    torch.manual_seed(0)
    return [build_torch_model(cfg.model, ds.num_classes, ds.image_shape[0]) for _ in range(k)]


def torch_batches(x, y, batch, seed, mean, std):
    import torch

    order = np.random.default_rng(seed).permutation(len(y))
    t = torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    labels = torch.tensor(y, dtype=torch.long)
    return [(t[order[i:i + batch]], labels[order[i:i + batch]]) for i in range(0, len(y), batch)]


def torch_sequential(cfg, ds, x, y, k) -> float | str:
    """K PyTorch models one after another, one epoch each (after a warm-up epoch), as a PyTorch
    toolkit trains a pool; ``TORCH_MISSING`` without PyTorch."""
    torch = torch_or_none()
    if torch is None:
        return TORCH_MISSING
    total = 0.0
    for i, model in enumerate(torch_models(cfg, ds, k)):
        opt = torch.optim.Adam(model.parameters(), lr=cfg.retrain.lr)
        model.train()
        for epoch in range(2):
            start = time.perf_counter()
            for xb, yb in torch_batches(x, y, cfg.data.batch_size, i * 100 + epoch, ds.mean, ds.std):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
            if epoch == 1:
                total += time.perf_counter() - start
    return total


def torch_vmapped(cfg, ds, x, y, k) -> float | str:
    """K PyTorch models as one: torch.func.stack_module_state + functional_call under torch.func.vmap
    (the PyTorch way to ensemble); Adam on the stacked parameters (elementwise, so per model);
    ``TORCH_MISSING`` without PyTorch."""
    torch = torch_or_none()
    if torch is None:
        return TORCH_MISSING
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    models = torch_models(cfg, ds, k)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in models[0].modules()):
        return "n/a: BatchNorm's running statistics are in-place updates torch.func.vmap cannot batch"
    params, buffers = stack_module_state(models)
    base = models[0].to("meta")

    def loss(p, b, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    step = vmap(grad_and_value(loss), in_dims=(0, 0, 0, 0))
    leaves = list(params.values())
    opt = torch.optim.Adam(leaves, lr=cfg.retrain.lr)
    seconds = 0.0
    for epoch in range(2):
        per_model = [torch_batches(x, y, cfg.data.batch_size, i * 100 + epoch, ds.mean, ds.std) for i in range(k)]
        start = time.perf_counter()
        for parts in zip(*per_model):
            if len({len(p[1]) for p in parts}) != 1:
                continue
            xb, yb = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
            grads, _ = step(params, buffers, xb, yb)
            for name, leaf in params.items():
                leaf.grad = grads[name]
            opt.step()
        if epoch == 1:
            seconds = time.perf_counter() - start
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit", choices=("vit", "resnet50", "resnet18"))
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--k", default="1,4,16,64")
    parser.add_argument("--modes", default="vmap,map,loop")
    parser.add_argument("--torch", default="auto", choices=("auto", "off"))
    parser.add_argument("--torch-max-k", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = build_config(args.model, args.preset, sets=["retrain.optimizer=adam", "retrain.lr=1e-3",
                                                      "retrain.clip_norm=0", "retrain.weight_decay=0",
                                                      "retrain.schedule=constant", "retrain.augment=[]"])
    ds, split = load_data(cfg)
    x, y = split.retain.x, split.retain.y
    auto = choose_mode("auto")
    torch = torch_or_none()
    if args.torch == "auto" and torch is None:
        log(f"PyTorch columns {TORCH_MISSING}")
    rows = []
    for k in [int(v) for v in args.k.split(",")]:
        seeds = list(range(1, k + 1))
        row = {"k": k}
        log(f"K={k}: jax sequential")
        row["sequential_s"] = jax_sequential(cfg, ds, x, y, seeds)
        for mode in dict.fromkeys(args.modes.split(",") + [auto]):  # the pool's own mode is always measured
            log(f"K={k}: jax pool, {mode}")
            row[f"{'vmapped' if mode == 'vmap' else mode}_s"] = jax_pool(cfg, ds, x, y, seeds, mode)[0]
        row["pool_mode"] = auto
        row["pool_s"] = row[f"{'vmapped' if auto == 'vmap' else auto}_s"]
        row["speedup"] = row["sequential_s"] / row["pool_s"]
        if "vmapped_s" in row:
            row["vmap_speedup"] = row["sequential_s"] / row["vmapped_s"]
        keras.utils.set_random_seed(0)
        trainer = Trainer(build_model(cfg.model, ds.num_classes, ds.image_shape), make_optimizer(cfg.retrain, 10),
                          num_classes=ds.num_classes, preprocess=ds.preprocess, verbose=False)
        state, work, shared = pool_bytes(trainer, cfg.data.batch_size)
        row["pool_bytes_estimate"] = {"vmap": k * (state + work) + shared, "loop": k * state + work + shared}
        if args.torch == "auto" and k <= args.torch_max_k:
            if torch is not None:
                log(f"K={k}: torch sequential, torch.func.vmap")
            row["torch_sequential_s"] = torch_sequential(cfg, ds, x, y, k)
            try:
                row["torch_vmap_s"] = torch_vmapped(cfg, ds, x, y, k)
            except Exception as exc:  # noqa: BLE001 - an op torch.func cannot batch: say which
                row["torch_vmap_s"] = f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
        log(json.dumps(row))
    result = {"model": args.model, "preset": args.preset, "images": len(y), "batch_size": cfg.data.batch_size,
              "steps_per_epoch": num_batches(len(y), cfg.data.batch_size), "rows": rows,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{jax.devices()[0].platform}: {getattr(jax.devices()[0], 'device_kind', '')}",
              "versions": {"jax": jax.__version__, "keras": keras.__version__,
                           "torch": None if torch is None else torch.__version__},
              "date": time.strftime("%Y-%m-%d")}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))
    if torch is None and args.torch == "auto":
        print(f"\nPyTorch columns {TORCH_MISSING}.")
    return 0


def table(result: dict) -> str:
    head = "| K | sequential (s) | pool vmap | pool lax.map | pool loop | auto | speed-up | torch sequential | torch vmap |"
    lines = [head, "|---" * 9 + "|"]
    for r in result["rows"]:
        def cell(key):
            v = r.get(key)
            if isinstance(v, str) and v.startswith("skipped"):
                return "skipped"
            return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append(f"| {r['k']} | {cell('sequential_s')} | {cell('vmapped_s')} | {cell('map_s')} | {cell('loop_s')} "
                     f"| {r['pool_mode']} | {r['speedup']:.2f}x | {cell('torch_sequential_s')} | "
                     f"{cell('torch_vmap_s') if not str(r.get('torch_vmap_s', '')).startswith('n/a') else 'n/a'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
