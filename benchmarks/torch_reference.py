"""An independent PyTorch implementation of the unlearning paradigms, written from REFERENCE.md.

torch.nn.utils.prune.ln_structured + prune.remove for pruning, peft LoRA with the reference's
targets, Adam 1e-3, cross-entropy, train mode while training (BatchNorm statistics update), eval
mode for evaluation, and the same metric functions (``prunelora_keras.evaluation.metrics``, pure numpy) on
the same split. It starts from a given state dict of the original model (converted from the
Keras checkpoint by ``prunelora_keras.interop.torch``), so both frameworks unlearn the same model.

Run by ``benchmarks/compare.py`` in its own process (so peak memory and threads are its own):

    python benchmarks/torch_reference.py --model vit --preset cpu --data-dir PATH \
        --state-dict original.pt --out torch.json [--paradigms finetune,lora] [--set key=value]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.utils.prune as tprune

from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.sources import load_dataset
from prunelora_keras.data.datasets import make_split
from prunelora_keras.interop.torch_models import build_torch_model
from prunelora_keras.evaluation.metrics import unlearning_metrics


def to_tensor(x: np.ndarray, mean, std) -> torch.Tensor:
    t = torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    return (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def prune_reference(model: torch.nn.Module, cfg, name: str = "pruned") -> None:
    """REFERENCE.md: ln_structured(amount, n=2, dim=0) then prune.remove on the targets (the amount of
    method ``name``'s hyperparameters)."""
    if cfg.model.name.startswith("resnet"):
        modules = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    else:
        modules = [model.blocks[-1].attn.out_proj, model.head]
    for m in modules:
        tprune.ln_structured(m, "weight", amount=cfg.methods[name].amount, n=2, dim=0)
        tprune.remove(m, "weight")


def add_peft_lora(model: torch.nn.Module, cfg, name: str = "lora"):
    import peft

    u, h = cfg.unlearn, cfg.methods[name]
    if cfg.model.name.startswith("resnet"):
        targets, save = r".*layer\d+\.\d+\.conv\d", ["linear"]
    else:
        depth = cfg.model.depth
        targets = ["head"] if u.vit_lora_targets == "reference" else [f"blocks.{depth - 1}.attn.out_proj", "head"]
        save = None
    config = peft.LoraConfig(r=h.rank, lora_alpha=h.alpha, lora_dropout=h.dropout,
                             target_modules=targets, modules_to_save=save)
    return peft.get_peft_model(model, config)


@torch.no_grad()
def logits_of(model, x, mean, std, batch_size=500) -> np.ndarray:
    model.eval()
    out = [model(to_tensor(x[i:i + batch_size], mean, std)).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def run_paradigm(name, state_dict, cfg, ds, split, log=print) -> list[dict]:
    u, h = cfg.unlearn, cfg.methods[name]
    torch.manual_seed(cfg.seed)
    model = build_torch_model(cfg.model, ds.num_classes, ds.image_shape[0])
    model.load_state_dict(state_dict)
    if name in ("pruned", "pruned_lora"):
        prune_reference(model, cfg, name)
    if name in ("lora", "pruned_lora"):
        model = add_peft_lora(model, cfg, name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=h.lr, weight_decay=h.weight_decay)
    x, y = split.retain.x, split.retain.y
    rng = np.random.default_rng(cfg.seed)
    seconds, rows = [], []
    for epoch in range(1, max(u.epochs) + 1):
        model.train()
        order = rng.permutation(len(y))
        start = time.perf_counter()
        for i in range(0, len(y), u.batch_size):
            idx = order[i:i + u.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(to_tensor(x[idx], ds.mean, ds.std)),
                                                     torch.tensor(y[idx], dtype=torch.long))
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
        log(f"torch {name} epoch {epoch}: loss {loss.item():.4f} {seconds[-1]:.2f}s")
        if epoch in u.epochs:
            sets = {"retain": split.retain, "forget": split.forget, "test_retain": split.test_retain}
            logits = {k: logits_of(model, v.x, ds.mean, ds.std) for k, v in sets.items()}
            metrics = unlearning_metrics(logits, {k: v.y for k, v in sets.items()}, cfg.seed,
                                         cfg.eval.mia_members, cfg.eval.mia_nonmembers)
            rows.append({"paradigm": name, "epochs": epoch, **metrics,
                         "rte_s": float(np.median(seconds)), "rte_mean_s": float(np.mean(seconds)),
                         "trainable_params": int(sum(p.numel() for p in params)),
                         "peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                         "mem_kind": "host_rss"})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--data-dir", default="")
    p.add_argument("--state-dict", required=True)
    p.add_argument("--paradigms", default="finetune,pruned,lora,pruned_lora")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    overrides = {"data.data_dir": args.data_dir} if args.data_dir else {}
    cfg = build_config(args.model, args.preset, None, overrides, args.sets)
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, labels=cfg.data.labels,
                      image_size=cfg.data.image_size)
    split = make_split(ds, cfg.data.forget_class, cfg.data.train_size, cfg.data.test_size, cfg.seed)
    state = torch.load(args.state_dict, weights_only=True)
    rows = []
    for name in args.paradigms.split(","):
        rows += run_paradigm(name, state, cfg, ds, split, log=lambda m: print(m, file=sys.stderr, flush=True))
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
