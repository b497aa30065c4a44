"""Do the two frameworks take the same optimiser steps? Identical batches, identical start.

    python benchmarks/step_parity.py --model resnet50 --preset cpu --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --run-dir runs/cpu-resnet50 --paradigm pruned --steps 145 --out benchmarks/results/step_parity-resnet50.json

compare.py and seed_spread.py compare whole runs, whose batch orders, dropout and MIA draws
differ between the frameworks. This removes every random stream: the paradigm's model is built
once in Keras (pruning included), converted to PyTorch (``interop.torch``), and both take the
same batches in the same order with Adam at the preset's settings. Reported per step: each
framework's training loss; every ``--check-every`` steps: the largest relative difference over
all weights and BatchNorm statistics; at the end: RA and TA of both. Also reported: whether
PyTorch's own pruning (``ln_structured`` + ``prune.remove``) of the original model zeroes the same
channels as ours. If the steps agree, a difference between full runs is the random stream's.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
from pathlib import Path

import numpy as np

import prunelora_keras  # noqa: F401  (Keras on JAX before anything imports keras)
import keras
import torch

from prunelora_keras.experiment import pipeline
from prunelora_keras.training.recipe import TrainConfig
from prunelora_keras.experiment.config import build_config
from prunelora_keras.data.batches import num_batches
from prunelora_keras.interop.torch import keras_to_state_dict, load_state_dict_into_keras
from prunelora_keras.interop.torch_models import build_torch_model
from prunelora_keras.experiment.paradigms import build_recipe
from prunelora_keras.training.loop import Trainer
from prunelora_keras.training.inference import accuracy
from prunelora_keras.training.optim import make_optimizer
from prunelora_keras.training.bn import set_bn_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_reference  # noqa: E402


def zero_channels(state: dict) -> dict[str, np.ndarray]:
    """{weight name: boolean per output channel, True where the whole channel is zero}."""
    out = {}
    for k, v in state.items():
        if k.endswith("weight") and v.ndim in (2, 4):
            out[k] = (v.detach().reshape(v.shape[0], -1) == 0).all(dim=1).numpy()
    return out


def largest_difference(a: dict, b: dict) -> tuple[str, float]:
    """The tensor with the largest max|a-b| / (max|b| + 1e-12), and that value."""
    worst, name = -1.0, ""
    for k, vb in b.items():
        if k.endswith("num_batches_tracked"):
            continue
        va = a[k].detach().double()
        vb = vb.detach().double()
        rel = float((va - vb).abs().max() / (vb.abs().max() + 1e-12))
        if rel > worst:
            worst, name = rel, k
    return name, worst


def first_step_gradients(model, tmodel, xb, yb, ds) -> list[dict]:
    """Both frameworks' gradients of the training loss on one batch, per PyTorch parameter name:
    the relative difference max|g_keras - g_torch| / max|g_torch| and both norms."""
    import jax
    import jax.numpy as jnp
    import optax

    from prunelora_keras.data.augment import normalize, to_float

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    x = normalize(to_float(jnp.asarray(xb)), tuple(ds.mean), tuple(ds.std))

    def loss_fn(tv):
        logits, _ = model.stateless_call(tv, non_trainable, x, training=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(yb)).mean()

    grads = jax.grad(loss_fn)(trainable)
    saved = [np.asarray(v) for v in trainable]
    for var, g in zip(model.trainable_variables, grads):  # the converter lays gradients out as torch's weights
        var.assign(g)
    keras_grads = keras_to_state_dict(model)
    for var, value in zip(model.trainable_variables, saved):
        var.assign(value)
    tmodel.train()
    tmodel.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(tmodel(torch_reference.to_tensor(xb, ds.mean, ds.std)),
                                      torch.tensor(yb, dtype=torch.long)).backward()
    out = []
    for name, param in tmodel.named_parameters():
        if param.grad is None:
            continue
        tg, kg = param.grad.double(), keras_grads[name].double()
        out.append({"tensor": name, "rel_diff": float((kg - tg).abs().max() / (tg.abs().max() + 1e-30)),
                    "keras_norm": float(kg.norm()), "torch_norm": float(tg.norm())})
    tmodel.zero_grad(set_to_none=True)
    return out


def torch_gradient_differences(tmodel, pmodel, xb, yb, ds) -> dict[str, float]:
    """max|g_perturbed - g| / max|g| per parameter: PyTorch against itself from perturbed weights."""
    grads = []
    for m in (tmodel, pmodel):
        m.train()
        m.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(torch_reference.to_tensor(xb, ds.mean, ds.std)),
                                          torch.tensor(yb, dtype=torch.long)).backward()
        grads.append({n: p.grad.double().clone() for n, p in m.named_parameters() if p.grad is not None})
        m.zero_grad(set_to_none=True)
    return {n: float((grads[1][n] - g).abs().max() / (g.abs().max() + 1e-30)) for n, g in grads[0].items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--data-dir", default="")
    p.add_argument("--run-dir", required=True, help="run folder holding (or to hold) the original model's checkpoint")
    p.add_argument("--paradigm", default="pruned", choices=["finetune", "pruned"])
    p.add_argument("--steps", type=int, default=145)
    p.add_argument("--check-every", type=int, default=29)
    p.add_argument("--controls", type=int, default=3, help="perturbed runs per framework for the outcome's spread")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    overrides = {"data.data_dir": a.data_dir} if a.data_dir else {}
    cfg = build_config(a.model, a.preset, None, overrides, a.sets)
    u, h = cfg.unlearn, cfg.methods[a.paradigm]
    ds, split = pipeline.load_data(cfg)
    _, original = pipeline.train_stage("original", cfg, cfg.pretrain, split.train, ds, split, Path(a.run_dir),
                                       pipeline.data_identity(cfg))

    # PyTorch's pruning of the original vs ours: the same channels?
    original_model = keras.saving.load_model(original.checkpoint, compile=False, safe_mode=True)
    torch_pruned = build_torch_model(cfg.model, ds.num_classes, ds.image_shape[0])
    torch_pruned.load_state_dict(keras_to_state_dict(original_model))
    if a.paradigm == "pruned":
        torch_reference.prune_reference(torch_pruned, cfg)

    keras.utils.set_random_seed(cfg.seed)
    model = pipeline.with_fast_layers(keras.saving.load_model(original.checkpoint, compile=False, safe_mode=True))
    recipe = build_recipe(a.paradigm, model, cfg)
    set_bn_policy(recipe.model, u.bn)
    start_state = keras_to_state_dict(recipe.model)
    ours, theirs = zero_channels(start_state), zero_channels(torch_pruned.state_dict())
    mask_mismatch = {k: int((ours[k] != theirs[k]).sum()) for k in ours if (ours[k] != theirs[k]).any()}
    zeroed = int(sum(v.sum() for v in ours.values()))

    # Both frameworks from the very same weights.
    tmodel = build_torch_model(cfg.model, ds.num_classes, ds.image_shape[0])
    tmodel.load_state_dict(start_state)
    params = [q for q in tmodel.parameters() if q.requires_grad]
    topt = torch.optim.Adam(params, lr=h.lr, weight_decay=h.weight_decay)
    # The control: PyTorch against itself, from weights moved by float32 rounding noise (relative
    # 1e-7, below one unit in the last place for most weights). How far apart these two drift is
    # what float rounding alone does to this training; Keras vs PyTorch is judged against it.
    gen = torch.Generator().manual_seed(cfg.seed)
    noisy = {k: (v * (1 + 1e-7 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v)
             for k, v in start_state.items()}
    pmodel = build_torch_model(cfg.model, ds.num_classes, ds.image_shape[0])
    pmodel.load_state_dict(noisy)
    popt = torch.optim.Adam([q for q in pmodel.parameters() if q.requires_grad], lr=h.lr,
                            weight_decay=h.weight_decay)
    total = num_batches(len(split.retain), u.batch_size) * max(u.epochs)
    opt = make_optimizer(TrainConfig(epochs=max(u.epochs), optimizer=h.optimizer, lr=h.lr,
                                     weight_decay=h.weight_decay, schedule="constant"), total)
    trainer = Trainer(recipe.model, opt, num_classes=ds.num_classes, preprocess=ds.preprocess, train_vars=recipe.train_vars,
                      masks=recipe.masks, seed=cfg.seed, label=a.paradigm)

    x, y = split.retain.x, split.retain.y
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(len(y)) for _ in range(-(-a.steps * u.batch_size // len(y)) + 1)])
    # on copies: a forward pass in train mode updates PyTorch's BatchNorm running statistics
    xb0, yb0 = x[order[:u.batch_size]], y[order[:u.batch_size]]
    grads = first_step_gradients(recipe.model, copy.deepcopy(tmodel), xb0, yb0, ds)
    control = torch_gradient_differences(copy.deepcopy(tmodel), copy.deepcopy(pmodel), xb0, yb0, ds)
    for g in grads:
        g["control_rel_diff"] = control[g["tensor"]]
    worst = sorted(grads, key=lambda g: -g["rel_diff"])[:5]
    print("first-step gradients, largest relative differences:", json.dumps(worst), flush=True)
    steps, checks = [], []
    for step in range(a.steps):
        idx = order[step * u.batch_size:(step + 1) * u.batch_size]
        xb, yb = x[idx], y[idx]
        with contextlib.redirect_stderr(io.StringIO()):  # one "epoch" line per step otherwise
            keras_loss = trainer.fit(xb, yb, 1, len(yb), first_epoch=step + 1)[0].loss
        losses = []
        for tm, to in ((tmodel, topt), (pmodel, popt)):
            tm.train()
            to.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(tm(torch_reference.to_tensor(xb, ds.mean, ds.std)),
                                                     torch.tensor(yb, dtype=torch.long))
            loss.backward()
            to.step()
            losses.append(float(loss.detach()))
        loss = losses[0]
        steps.append({"step": step + 1, "keras_loss": keras_loss, "torch_loss": losses[0],
                      "torch_perturbed_loss": losses[1]})
        if (step + 1) % a.check_every == 0 or step + 1 == a.steps:
            name, rel = largest_difference(keras_to_state_dict(recipe.model), tmodel.state_dict())
            pname, prel = largest_difference(pmodel.state_dict(), tmodel.state_dict())
            checks.append({"step": step + 1, "worst_tensor": name, "max_rel_diff": rel,
                           "control_worst_tensor": pname, "control_max_rel_diff": prel})
            print(f"step {step + 1}: loss keras {keras_loss:.4f} torch {float(loss):.4f}; "
                  f"largest weight difference {rel:.2e} ({name}); torch vs perturbed torch {prel:.2e}", flush=True)

    def scores(logits_of) -> dict[str, float]:
        return {"RA": 100 * accuracy(logits_of(split.retain.x), split.retain.y),
                "TA": 100 * accuracy(logits_of(split.test_retain.x), split.test_retain.y),
                "UA": 100 * (1 - accuracy(logits_of(split.forget.x), split.forget.y))}

    from prunelora_keras.training.inference import predict_logits

    def keras_scores(model):
        return scores(lambda xs: predict_logits(model, xs, ds.preprocess, cfg.data.eval_batch_size))

    # The outcome's spread under rounding noise alone, in each framework: --controls more runs from
    # the start weights perturbed by 1e-7 (relative; noise seeds 1..K), on the same batches.
    spread = []
    for k in range(1, a.controls + 1):
        g = torch.Generator().manual_seed(1000 + k)
        state_k = {key: (v * (1 + 1e-7 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v)
                   for key, v in start_state.items()}
        tm = build_torch_model(cfg.model, ds.num_classes, ds.image_shape[0])
        tm.load_state_dict(state_k)
        to = torch.optim.Adam([q for q in tm.parameters() if q.requires_grad], lr=h.lr, weight_decay=h.weight_decay)
        km = build_recipe(a.paradigm, pipeline.with_fast_layers(
            keras.saving.load_model(original.checkpoint, compile=False, safe_mode=True)), cfg)
        set_bn_policy(km.model, u.bn)
        load_state_dict_into_keras(km.model, state_k)
        kt = Trainer(km.model, opt, num_classes=ds.num_classes, preprocess=ds.preprocess, train_vars=km.train_vars, masks=km.masks,
                     seed=cfg.seed, label=a.paradigm)
        for step in range(a.steps):
            idx = order[step * u.batch_size:(step + 1) * u.batch_size]
            with contextlib.redirect_stderr(io.StringIO()):
                kt.fit(x[idx], y[idx], 1, len(idx), first_epoch=step + 1)
            tm.train()
            to.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tm(torch_reference.to_tensor(x[idx], ds.mean, ds.std)),
                                              torch.tensor(y[idx], dtype=torch.long)).backward()
            to.step()
        spread.append({"noise_seed": k, "keras": keras_scores(km.model),
                       "torch": scores(lambda xs: torch_reference.logits_of(tm, xs, ds.mean, ds.std))})
        print(f"control {k}: {json.dumps(spread[-1])}", flush=True)

    end = {"keras": keras_scores(recipe.model),
           "torch": scores(lambda xs: torch_reference.logits_of(tmodel, xs, ds.mean, ds.std)),
           "torch, start perturbed 1e-7": scores(lambda xs: torch_reference.logits_of(pmodel, xs, ds.mean, ds.std))}
    kl, tl = np.array([s["keras_loss"] for s in steps]), np.array([s["torch_loss"] for s in steps])
    pl = np.array([s["torch_perturbed_loss"] for s in steps])
    result = {"model": a.model, "preset": a.preset, "paradigm": a.paradigm, "batch_size": u.batch_size,
              "zeroed_channels": zeroed, "pruning_mask_mismatches": mask_mismatch, "first_step_gradients": grads,
              "steps": steps,
              "weight_checks": checks, "end": end, "perturbed_runs": spread,
              "loss_max_abs_diff": float(np.max(np.abs(kl - tl))), "loss_mean_keras": float(kl.mean()),
              "control_loss_max_abs_diff": float(np.max(np.abs(pl - tl))), "loss_mean_torch_perturbed": float(pl.mean()),
              "loss_mean_torch": float(tl.mean())}
    out = Path(a.out)
    out.write_text(json.dumps(result, indent=2))
    lines = [f"{a.model} {a.paradigm}: {a.steps} identical steps (batch {u.batch_size}) from identical weights",
             "", f"- pruning: {zeroed} channels zeroed by ours; channels where PyTorch's ln_structured differs: "
                 f"{sum(mask_mismatch.values())}",
             f"- training loss, mean over the steps: keras {kl.mean():.4f}, torch {tl.mean():.4f}; "
             f"largest per-step difference {np.max(np.abs(kl - tl)):.2e}",
             f"- control, PyTorch from weights perturbed by 1e-7 (relative): mean loss {pl.mean():.4f}, largest per-step "
             f"difference to PyTorch {np.max(np.abs(pl - tl)):.2e}",
             "- step losses (keras / torch / perturbed torch): "
             + ", ".join(f"{i + 1}: {kl[i]:.3f}/{tl[i]:.3f}/{pl[i]:.3f}" for i in range(min(4, len(kl)))),
             f"- first-step gradients: largest relative difference {worst[0]['rel_diff']:.2e} ({worst[0]['tensor']}), "
             f"median {np.median([g['rel_diff'] for g in grads]):.2e} over {len(grads)} tensors; PyTorch against "
             f"itself from the perturbed weights: largest {max(g['control_rel_diff'] for g in grads):.2e}, median "
             f"{np.median([g['control_rel_diff'] for g in grads]):.2e}",
             "", "| step | keras vs torch: largest relative weight difference | tensor | torch vs perturbed torch | tensor |",
             "|---|---|---|---|---|"]
    lines += [f"| {c['step']} | {c['max_rel_diff']:.2e} | {c['worst_tensor']} | {c['control_max_rel_diff']:.2e} | "
              f"{c['control_worst_tensor']} |" for c in checks]
    lines += ["", "| model after the steps | UA | RA | TA |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['UA']:.2f} | {v['RA']:.2f} | {v['TA']:.2f} |" for k, v in end.items()]
    if spread:
        lines += ["", f"Outcome spread under rounding noise: {len(spread)} more runs per framework from the start weights "
                      "perturbed by 1e-7 (relative), same batches (mean ± std, then each run)", "",
                  "| framework | RA | TA | runs (RA) |", "|---|---|---|---|"]
        for fw in ("keras", "torch"):
            ra = [r[fw]["RA"] for r in spread] + [end[fw]["RA"]]
            ta = [r[fw]["TA"] for r in spread] + [end[fw]["TA"]]
            lines.append(f"| {fw} (unperturbed + {len(spread)}) | {np.mean(ra):.2f} ± {np.std(ra):.2f} | "
                         f"{np.mean(ta):.2f} ± {np.std(ta):.2f} | {', '.join(f'{v:.1f}' for v in ra)} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
