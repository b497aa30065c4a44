"""The command's arguments: the parser, the configuration keys its flags set, and ``--list-keys``.

Imports nothing heavy (no Keras, JAX or scikit-learn), so ``--help`` and every argument error are
answered before the command loads anything (``run.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from prunelora_keras.methods import builtin_names as method_names
from prunelora_keras.methods.builtin_names import hparams_type
from prunelora_keras.methods.hparams import describe
from prunelora_keras.experiment.config import MODEL_NAMES, available_presets
from prunelora_keras.errors import UserError


def config_keys(cfg=None) -> list[tuple[str, str, str]]:
    """(key, type, value) of every configuration key, from the typed Config's dataclasses: the values
    of ``cfg`` (the dataclass defaults without one)."""
    from prunelora_keras.experiment.config import SECTIONS, TOP_LEVEL, Config

    values_from = cfg if cfg is not None else Config()
    rows = [(key, "int", repr(getattr(values_from, key))) for key in TOP_LEVEL]
    for section, cls in SECTIONS.items():
        values = getattr(values_from, section)
        for f in dataclasses.fields(cls):
            tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows.append((f"{section}.{f.name}", tp, json.dumps(getattr(values, f.name))))
    for method, hp in values_from.methods.items():  # each method's hyperparameters (methods/builtin_hparams.py)
        for name, tp, _default, _doc in describe(type(hp)):
            value = getattr(hp, name)
            rows.append((f"{method}.{name}", tp, json.dumps(list(value) if isinstance(value, tuple) else value)))
    return rows


def allowed_values(key: str) -> str:
    """What a string or list key accepts ("one of a, b", "any of a, b"), "" for free-form keys."""
    from prunelora_keras.experiment.config import AUGMENTATIONS, CHOICES, DATASET_NAMES, SECTIONS

    section, _, name = key.partition(".")
    hp = hparams_type(section) if section in method_names.BUILTIN or section in method_names.names() else None
    if hp is not None and section not in SECTIONS:
        doc = {n: d for n, _, _, d in describe(hp)}.get(name, "")
        return doc
    if (section, name) in CHOICES:
        return "one of " + ", ".join(CHOICES[(section, name)])
    if key == "data.dataset":
        return "one of " + ", ".join(DATASET_NAMES)
    if name == "augment":
        return "any of " + ", ".join(AUGMENTATIONS)
    if key == "unlearn.paradigms":
        return "any of " + ", ".join(method_names.names())
    return ""


def list_keys(cfg, sources: str) -> str:
    """``--list-keys``: every key --set and --config accept, its type, the value this run would use
    (``sources`` says which layers made it) and, for string keys, the allowed values."""
    rows = config_keys(cfg)
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(max(len(v) for _, _, v in rows), 40)
    lines = [f"values this run would use: {sources}",
             f"{'key':<{width}}  {'type':<11}  {'value':<{vwidth}}  allowed"]
    for key, tp, value in rows:
        lines.append(f"{key:<{width}}  {tp:<11}  {value:<{vwidth}}  {allowed_values(key)}".rstrip())
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m prunelora_keras.run",
        description="Class-wise machine unlearning (PruneLoRA and baselines) on image classifiers (CIFAR-10/100, SVHN, "
                    "TinyImageNet, an image folder, digits), "
                    "with Keras 3 on JAX. Trains the original model, the Retrain baseline and each unlearning "
                    "paradigm (Finetune, Pruned, LoRA, Pruned LoRA), then reports UA, MIA-Efficacy, RA, TA, "
                    "seconds per epoch and peak memory.",
        epilog="Example: python -m prunelora_keras.run --model vit --preset quick",
        usage="python -m prunelora_keras.run --model {" + ",".join(MODEL_NAMES) + "} [options]",
    )
    required = parser.add_argument_group("required")  # checked in main (a closest-name hint; --list-keys needs none)
    required.add_argument("--model", metavar="{" + ",".join(MODEL_NAMES) + "}",
                          help="architecture; presets scale it (e.g. width for ResNets, depth and width for the ViT)")
    parser.add_argument("--preset", default="paper", metavar="NAME",
                        help=f"TOML preset from configs/: {', '.join(available_presets())} (default: paper, "
                             "full scale, meant for a GPU; quick runs offline on digits in minutes)")
    parser.add_argument("--config", metavar="FILE.toml", help="a TOML file laid out like a preset, applied on top of it")
    parser.add_argument("--dataset", help="cifar10, cifar100, svhn, tinyimagenet, digits, folder:PATH (a class-folder "
                                          "tree) or tfds:NAME (default: the preset's)")
    parser.add_argument("--data-dir", metavar="PATH",
                        help="the data set's official files: CIFAR-10 as cifar-10-batches-py, an image-folder tree "
                             "train/<class>/ test/<class>/, or a .tar.gz/.tar/.zip of that tree (default: Keras's "
                             "download cache); cifar-100-python; SVHN's .mat files; tiny-imagenet-200")
    parser.add_argument("--forget-class", metavar="N[,N...]",
                        help="the class to unlearn (default: the preset's, 3); several, e.g. 3,5,7: continual "
                             "unlearning, one request after another on the same models, metrics after each")
    parser.add_argument("--forget-each", metavar="all|N,N,...",
                        help="one independent class-wise experiment per class (all, or a list such as 0,3,7), each in "
                             "<out>/class<N>/ from one shared original model, folded into mean ± std over classes and "
                             "a per-class table")
    parser.add_argument("--weights", metavar="FILE",
                        help="unlearn from this trained model instead of pretraining one: a .keras file or a PyTorch "
                             "state dict (.pt/.pth) of the same architecture (loaded safely: no code from the file runs)")
    parser.add_argument("--forget-fraction", type=float, metavar="F",
                        help="random-sample forgetting: forget a seeded stratified fraction F of the training set "
                             "(e.g. 0.1) instead of one class")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                        help="import this module first (a name on the Python path, or a .py file; repeatable): the "
                             "methods it registers with plk.methods.register join --paradigms and --set")
    parser.add_argument("--paradigms", metavar="A,B,...",
                        help="which methods to run, any of " + ",".join(method_names.names("paper")) + " (the paper's "
                             "five, the default) and the baselines " + ",".join(method_names.names("baseline")))
    parser.add_argument("--epochs", metavar="E1,E2,...",
                        help="unlearning epoch columns, e.g. 5,10 (default); one run of the largest, the others "
                             "evaluated on the way")
    parser.add_argument("--eval-models", type=int, metavar="K",
                        help="many-model evaluation: train K Retrain models twice (the oracle and the ceiling) and K "
                             "runs of every method as pools, and add the NeurIPS 2023 challenge's forgetting quality "
                             "and KLoM (default off)")
    parser.add_argument("--eval-ulira", type=int, metavar="S",
                        help="U-LiRA (Hayes et al. 2024): train S shadow models (S even, >= 6) on random halves, "
                             "unlearn with every method, and add the per-example likelihood-ratio attack's accuracy "
                             "(0.5: indistinguishable from Retrain) and its TPR at low FPR (default off)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed for data order, subsampling and initialisation")
    parser.add_argument("--seeds", metavar="S1,S2,...",
                        help="run everything once per seed (into <out>/seed<N>/) and report mean and standard "
                             "deviation, e.g. --seeds 0,1,2")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<model>-<preset>-seed<seed>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override any config key, e.g. --set pretrain.epochs=3 --set data.train_size=2000 "
                             "(sections: model, data, pretrain, retrain, unlearn, eval; a method's hyperparameters: "
                             "METHOD.KEY, e.g. scrub.lr=1e-3; --list-keys prints every key); "
                             "repeatable")
    parser.add_argument("--devices", type=int, metavar="N",
                        help="data-parallel training over N local devices (default 0: all of them; a CPU is one)")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="multi-process run: the address of process 0, where JAX's coordinator listens (the same on "
                             "every process; with --num-processes and --process-id)")
    parser.add_argument("--num-processes", metavar="N|auto",
                        help="multi-process run: how many processes join (auto: JAX detects the job on a Cloud TPU pod "
                             "slice, SLURM, Open MPI or Kubernetes; srun with several tasks and Keras's "
                             "KERAS_DISTRIBUTION_* variables are detected without flags)")
    parser.add_argument("--process-id", type=int, metavar="I", help="multi-process run: this process, 0 to N-1")
    parser.add_argument("--coordinator-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="multi-process run: give up (error, exit 2) if the job has not formed after this long "
                             "(default 300, JAX's own)")
    parser.add_argument("--list-keys", action="store_true",
                        help="print every key --set and --config accept (section.key, type, the value this run "
                             "would use with the --preset, --config, flags and --set given, and a string key's "
                             "allowed values) and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="run again into a run folder that holds finished results for another configuration")

    def error(message: str) -> None:  # argparse's own errors: one line, exit 2, no usage dump
        raise UserError(f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def sources(args: argparse.Namespace) -> str:
    """What shaped the configuration, for ``--list-keys``'s header."""
    given = [f"--model {args.model}" if args.model else "--model resnet50 (the default; pass --model for another)",
             f"preset {args.preset}"] + ([f"--config {args.config}"] if args.config else [])
    if overrides(args) or args.sets:
        given.append("the flags and --set given")
    return ", ".join(given)


FLAG_KEYS = {"seed": "seed", "forget_fraction": "data.forget_fraction", "devices": "devices",
             "weights": "model.weights", "paradigms": "unlearn.paradigms", "eval_models": "eval.models",
             "eval_ulira": "eval.ulira", "epochs": "unlearn.epochs"}


def overrides(args: argparse.Namespace) -> dict:
    """The configuration keys the flags set (``--dataset`` -> ``data.dataset``, ...)."""
    out = {}
    if args.dataset is not None:
        out["data.dataset"] = args.dataset
    if args.data_dir is not None:
        out["data.data_dir"] = args.data_dir
    if args.forget_class is not None:
        classes = [c.strip() for c in args.forget_class.split(",") if c.strip()]
        if not classes or not all(c.lstrip("-").isdigit() for c in classes):
            raise UserError(f"--forget-class {args.forget_class!r}: pass a class number or a list such as 3,5,7")
        out["data.forget_class"] = int(classes[0])
        if len(classes) > 1:
            out["data.forget_classes"] = [int(c) for c in classes]
    for flag, key in FLAG_KEYS.items():  # the flags that set one configuration key as they are
        if getattr(args, flag) is not None:
            out[key] = getattr(args, flag)
    if args.forget_each is not None:
        if args.forget_class is not None:
            raise UserError("--forget-each and --forget-class exclude each other: --forget-each runs one experiment "
                            "per class; --forget-class N,M,... forgets classes one request after another")
        if args.forget_fraction is not None:
            raise UserError("--forget-each (class-wise forgetting) and --forget-fraction (random samples) exclude "
                            "each other: choose one")
    return out
