"""Time unlearning epochs per paradigm, compile and steady state apart, on synthetic data.

    python benchmarks/epoch_time.py --model resnet50 --preset cpu --images 1024 --epochs 3 \
        --out benchmarks/results/epoch_time-resnet50.json

Random uint8 images of the preset's shape (32x32 RGB for CIFAR presets), random labels; the
model is the preset's, freshly initialised (timing does not depend on the weights). Reports per
paradigm the compile seconds and the median steady-state seconds per epoch and per step, with the
frozen-prefix cache off and, where the paradigm allows an exact cut, on (``--cache both``, the
default; the one-off feature computation is reported as ``cache_s``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import prunelora_keras  # noqa: F401
import keras
import numpy as np

from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.datasets import Subset
from prunelora_keras.data.batches import num_batches
from prunelora_keras.models import build_model
from prunelora_keras.experiment.paradigms import build_recipe
from prunelora_keras.experiment.pipeline import device_description, versions
from prunelora_keras.experiment.context import training_inputs
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.data.augment import Preprocess


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="epochs per paradigm (the first one's compile is apart)")
    p.add_argument("--paradigms", default="finetune,pruned,lora,pruned_lora")
    p.add_argument("--cache", choices=["both", "off", "auto"], default="both",
                   help="frozen-prefix cache: time without it, with it (where exact), or both")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = build_config(args.model, args.preset, None, {}, args.sets)
    rng = np.random.default_rng(0)
    shape = (args.image_size, args.image_size, 3)
    x = rng.integers(0, 256, (args.images, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, args.images).astype(np.int32)
    u = cfg.unlearn
    stats = SimpleNamespace(preprocess=Preprocess((0.5,) * 3, (0.25,) * 3), num_classes=10)
    modes = {"both": ["off", "auto"], "off": ["off"], "auto": ["auto"]}[args.cache]
    rows: list[dict] = []

    def write() -> dict:  # after every row: a run cut short by a time limit keeps what it measured
        result = {"model": args.model, "preset": args.preset, "images": args.images, "batch_size": u.batch_size,
                  "device": device_description(), "versions": versions(), "config": cfg.to_dict(), "rows": rows}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)
        return result

    for name in args.paradigms.split(","):
        for mode in modes:
            keras.utils.set_random_seed(0)
            recipe = build_recipe(name, build_model(cfg.model, 10, shape), cfg)
            set_bn_policy(recipe.model, u.bn)
            cfg.unlearn.prefix_cache = mode
            model, inputs, features, facts = training_inputs(recipe, cfg, stats, Subset(x, y))
            if mode == "auto" and not features and "off" in modes:
                continue  # no exact cut for this paradigm: the uncached row says it all
            steps = num_batches(args.images, u.batch_size)
            h = cfg.methods[name]
            opt = make_optimizer(TrainConfig(optimizer=h.optimizer, lr=h.lr, schedule="constant"), steps * args.epochs)
            paths = {v.path for v in model.variables}
            trainer = Trainer(model, opt, num_classes=10, preprocess=stats.preprocess, train_vars=recipe.train_vars,
                              masks={k: m for k, m in recipe.masks.items() if k in paths}, label=name,
                              features=features)
            start = time.perf_counter()
            history = trainer.fit(inputs, y, args.epochs, u.batch_size)
            steady = [h.seconds for h in history[1:]] or [history[0].seconds]  # the first epoch warms up
            rows.append({"paradigm": name, "prefix_cache": features, "cache_s": facts.get("cache_s", 0.0),
                         "compile_s": history[0].compile_s, "epoch_s_median": float(np.median(steady)),
                         "step_s_median": float(np.median(steady)) / steps, "steps_per_epoch": steps,
                         "epoch_s_all": [h.seconds for h in history], "trainable_params": recipe.trainable_params,
                         "wall_s": time.perf_counter() - start})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            write()
    print(markdown(write()))
    return 0


def markdown(result: dict) -> str:
    lines = [f"{result['model']} ({result['preset']} preset), {result['images']} images, batch {result['batch_size']}, "
             f"{result['device']}", "", "| paradigm | prefix cache | s/epoch (median) | s/step | compile s | cache s |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['paradigm']} | {'on' if r['prefix_cache'] else 'off'} | {r['epoch_s_median']:.3f} | "
                     f"{r['step_s_median']:.4f} | {r['compile_s']:.1f} | {r['cache_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
