"""The search command's arguments: ``python -m prunelora_keras.tune --model vit --preset quick
--method salun --trials 20 --out DIR``, parsed and checked before anything heavy is imported.

Bad input (an unknown method, ``--trials`` < 1, a ``--space`` key the method does not declare, an
objective that does not exist) ends with one ``error:`` line and exit code 2, as the run command's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from prunelora_keras.errors import UserError, unknown_backend
from prunelora_keras.experiment.arguments import overrides
from prunelora_keras.experiment.config import MODEL_NAMES, available_presets, build_config
from prunelora_keras.methods import builtin_names
from prunelora_keras.experiment.plugins import load_plugins
from prunelora_keras.api.tune import EPOCHS, method_space  # noqa: F401  (EPOCHS: re-exported)
from prunelora_keras.methods.hparams import Search, did_you_mean

OBJECTIVES = {
    "avg_gap": "minimise Avg. Gap to Retrain on the validation split (UA, MIA-Efficacy, RA, TA; the tables' ranking)",
    "tow": "maximise Tug of War against Retrain on the validation split (UA, RA, TA; Zhao et al. 2024)",
}


@dataclass
class TuneRequest:
    """What the search runs: the configuration, the methods, the budget and each method's space."""

    cfg: Any
    model: str
    preset: str
    methods: list[str]
    trials: int
    max_epochs: int
    objective: str
    validation_fraction: float
    spaces: dict[str, dict[str, Search]]
    out: str
    tree_overrides: list[tuple[str, Any]]  # the flags' and --set's (key, value), for best.toml
    config_file: str | None
    command: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m prunelora_keras.tune",
        description="A seeded hyperparameter search (Optuna's TPE sampler) per unlearning method under one budget: the "
                    "same trials and the same maximum epochs for every method, each trial scored against Retrain on a "
                    "validation split carved from the training data, the chosen hyperparameters scored once on the "
                    "untouched split. Writes best-<method>.toml (python -m prunelora_keras.run --config reads it "
                    "back), trials.csv, trials.png, tune.md and tune.json.",
        epilog="Example: python -m prunelora_keras.tune --model vit --preset quick --method salun --trials 20 "
               "--out runs/tune-salun")
    parser.add_argument("--model", required=False, metavar="{" + ",".join(MODEL_NAMES) + "}", help="architecture")
    parser.add_argument("--preset", default="quick", metavar="NAME",
                        help=f"TOML preset from configs/: {', '.join(available_presets())} (default: quick)")
    parser.add_argument("--config", metavar="FILE.toml", help="a TOML file laid out like a preset, applied on top of it")
    parser.add_argument("--method", required=False, metavar="NAME|all|A,B",
                        help="the method(s) to tune: a registered name, a list, or all (every method but retrain)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                        help="import this module first (a name on the Python path, or a .py file; repeatable): the "
                             "methods it registers with plk.methods.register can be tuned")
    parser.add_argument("--trials", type=int, default=20, metavar="N", help="trials per method (default 20)")
    parser.add_argument("--max-epochs", type=int, metavar="E",
                        help="the epoch budget: every method that trains searches 1..E epochs (default: the largest "
                             "of unlearn.epochs)")
    parser.add_argument("--objective", default="avg_gap", metavar="|".join(OBJECTIVES),
                        help="; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()) + " (default avg_gap)")
    parser.add_argument("--space", metavar="KEY,KEY",
                        help="search only these of the method's declared keys (and epochs), e.g. lr,epochs; default: "
                             "every key the method declares a range for, and epochs")
    parser.add_argument("--validation-fraction", type=float, default=0.2, metavar="F",
                        help="the share of the training data held out as the validation test set (default 0.2)")
    parser.add_argument("--dataset", help="as the run command's --dataset")
    parser.add_argument("--data-dir", metavar="PATH", help="as the run command's --data-dir")
    parser.add_argument("--forget-class", metavar="N", help="the class to unlearn (default: the preset's)")
    parser.add_argument("--forget-fraction", type=float, metavar="F", help="random-sample forgetting of a fraction F")
    parser.add_argument("--seed", type=int, metavar="N", help="the run's seed and the sampler's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override any config key, as the run command's --set (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="the search folder (default: runs/tune-<model>-<preset>-<method>)")

    def error(message: str) -> None:  # argparse's own errors: one line, exit 2, no usage dump
        raise UserError(f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def method_list(text: str | None) -> list[str]:
    """``--method``: the methods to tune, checked against the registry (retrain is the reference, not a method)."""
    if not text:
        raise UserError("the following arguments are required: --method (a method name, a list A,B or all)")
    known = [n for n in builtin_names.names() if n != "retrain"]
    chosen = known if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in chosen:
        if name == "retrain":
            raise UserError("--method retrain: Retrain is the reference every trial is scored against, not a method to "
                            f"tune; choose some of {', '.join(known)}")
        if name not in known:
            raise UserError(f"--method {name!r} is not a method{did_you_mean(name, known)}; choose some of "
                            f"{', '.join(known)} or all")
    if len(set(chosen)) != len(chosen):
        raise UserError(f"--method {text!r} names a method twice")
    return chosen


def checked_space(name: str, keys: list[str] | None, max_epochs: int) -> dict[str, Search]:
    """``api.tune.method_space`` with the command's one-line errors."""
    try:
        return method_space(name, keys, max_epochs)
    except ValueError as exc:
        raise UserError(f"--space: {exc}") from None


def request(argv: list[str] | None = None) -> TuneRequest:
    """The parsed, checked request; ``UserError`` (one line) for anything wrong."""
    args = parse_args(argv)
    wrong = unknown_backend()
    if wrong is not None:
        raise UserError(str(wrong))
    load_plugins(args.plugin)  # a user's registered methods, before any name is checked
    if args.model is None:
        raise UserError("the following arguments are required: --model (see --help)")
    if args.model not in MODEL_NAMES:
        raise UserError(f"argument --model: invalid choice: {args.model!r}{did_you_mean(args.model, MODEL_NAMES)}; "
                        f"choose one of {', '.join(MODEL_NAMES)}")
    names = method_list(args.method)
    if args.trials < 1:
        raise UserError(f"--trials {args.trials}: pass at least 1 trial per method")
    if args.objective not in OBJECTIVES:
        raise UserError(f"--objective {args.objective!r} is not an objective{did_you_mean(args.objective, OBJECTIVES)}; "
                        f"choose one of {', '.join(OBJECTIVES)}")
    if not 0 < args.validation_fraction <= 0.5:
        raise UserError(f"--validation-fraction {args.validation_fraction:g}: pass a share in (0, 0.5]")
    flags = overrides(argparse.Namespace(
        dataset=args.dataset, data_dir=args.data_dir, forget_class=args.forget_class, forget_each=None,
        forget_fraction=args.forget_fraction, seed=args.seed, devices=None, weights=None, paradigms=None,
        eval_models=None, eval_ulira=None, epochs=None))
    if "data.forget_classes" in flags:
        raise UserError("--forget-class: the search tunes one forget request; pass one class")
    cfg = build_config(args.model, args.preset, args.config, flags, args.sets)
    if cfg.eval.models or cfg.eval.ulira:
        raise UserError("eval.models and eval.ulira are off during a search (each trial would train pools); tune "
                        "first, then run the many-model evaluation on best-<method>.toml")
    max_epochs = args.max_epochs if args.max_epochs is not None else max(cfg.unlearn.epochs)
    if max_epochs < 1:
        raise UserError(f"--max-epochs {max_epochs}: pass at least 1")
    keys = [k.strip() for k in args.space.split(",") if k.strip()] if args.space else None
    if keys is not None and not keys:
        raise UserError("--space: name at least one key, e.g. --space lr,epochs")
    spaces = {name: checked_space(name, keys, max_epochs) for name in names}
    from prunelora_keras.experiment.values import parse_set

    pairs = list(flags.items()) + [parse_set(s) for s in args.sets]
    label = "all" if args.method.strip() == "all" else "-".join(names)
    out = args.out or f"runs/tune-{args.model}-{args.preset}-{label}"
    command = "python -m prunelora_keras.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    return TuneRequest(cfg=cfg, model=args.model, preset=args.preset, methods=names, trials=args.trials,
                       max_epochs=max_epochs, objective=args.objective, validation_fraction=args.validation_fraction,
                       spaces=spaces, out=out, tree_overrides=pairs, config_file=args.config, command=command)


def describe(req: TuneRequest) -> dict[str, Any]:
    """The request as JSON data (tune.json's ``settings``): a re-run into the same folder must match it."""
    return {"model": req.model, "preset": req.preset, "methods": req.methods, "trials": req.trials,
            "max_epochs": req.max_epochs, "objective": req.objective,
            "validation_fraction": req.validation_fraction, "config": req.cfg.to_dict(),
            "spaces": {m: {k: dataclasses.asdict(s) for k, s in sp.items()} for m, sp in req.spaces.items()}}
