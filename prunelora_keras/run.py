"""The command: ``python -m prunelora_keras.run --model vit [--preset quick] ...``.

Parses arguments, resolves and validates a typed ``Config``, runs the pipeline into a run
folder and prints the results table. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

import prunelora_keras  # noqa: F401  (selects the JAX backend before keras is imported)
from prunelora_keras.config import MODEL_NAMES, available_presets, build_config
from prunelora_keras import methods
from prunelora_keras.budget import check_disk, checkpoint_bytes, estimate_train_seconds
from prunelora_keras.errors import TrainingFailed, UserError

EXIT_USAGE = 2
EXIT_FAILED = 1


def config_keys() -> list[tuple[str, str, str]]:
    """(key, type, default) of every configuration key, from the typed Config's dataclasses."""
    import dataclasses

    from prunelora_keras.config import SECTIONS, TOP_LEVEL, Config

    defaults = Config()
    rows = [(key, "int", repr(getattr(defaults, key))) for key in TOP_LEVEL]
    for section, cls in SECTIONS.items():
        values = getattr(defaults, section)
        for f in dataclasses.fields(cls):
            tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows.append((f"{section}.{f.name}", tp, json.dumps(getattr(values, f.name))))
    return rows


class ListKeys(argparse.Action):
    """``--list-keys``: print the keys and exit 0, like ``--help`` (needs no other argument)."""

    def __call__(self, parser, namespace, values, option_string=None):
        width = max(len(k) for k, _, _ in config_keys())
        print(f"{'key':<{width}}  type         default (before presets; the preset files in configs/ set more)")
        for key, tp, default in config_keys():
            print(f"{key:<{width}}  {tp:<11}  {default}")
        parser.exit(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m prunelora_keras.run",
        description="Class-wise machine unlearning (PruneLoRA and baselines) on CIFAR-10 or digits, "
                    "with Keras 3 on JAX. Trains the original model, the Retrain baseline and each unlearning "
                    "paradigm (Finetune, Pruned, LoRA, Pruned LoRA), then reports UA, MIA-Efficacy, RA, TA, "
                    "seconds per epoch and peak memory.",
        epilog="Example: python -m prunelora_keras.run --model vit --preset quick",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, metavar="{" + ",".join(MODEL_NAMES) + "}",
                        help="architecture; presets scale it (e.g. width for ResNets, depth and width for the ViT)")
    parser.add_argument("--preset", default="paper", metavar="NAME",
                        help=f"TOML preset from configs/: {', '.join(available_presets())} (default: paper, "
                             "full scale, meant for a GPU; quick runs offline on digits in minutes)")
    parser.add_argument("--config", metavar="FILE.toml", help="a TOML file laid out like a preset, applied on top of it")
    parser.add_argument("--dataset", help="cifar10, digits or tfds:cifar10 (default: the preset's)")
    parser.add_argument("--data-dir", metavar="PATH",
                        help="CIFAR-10 as cifar-10-batches-py, an image-folder tree train/<class>/ test/<class>/, "
                             "or a .tar.gz/.tar/.zip of that tree (default: Keras's download cache)")
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
    parser.add_argument("--paradigms", metavar="A,B,...",
                        help="which methods to run, any of " + ",".join(methods.names("paper")) + " (the paper's "
                             "five, the default) and the baselines " + ",".join(methods.names("baseline")))
    parser.add_argument("--epochs", metavar="E1,E2,...",
                        help="unlearning epoch columns, e.g. 5,10 (default); one run of the largest, the others "
                             "evaluated on the way")
    parser.add_argument("--eval-models", type=int, metavar="K",
                        help="many-model evaluation: train K Retrain models twice (the oracle and the ceiling) and K "
                             "runs of every method as pools, and add the NeurIPS 2023 challenge's forgetting quality "
                             "and KLoM (default off)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed for data order, subsampling and initialisation")
    parser.add_argument("--seeds", metavar="S1,S2,...",
                        help="run everything once per seed (into <out>/seed<N>/) and report mean and standard "
                             "deviation, e.g. --seeds 0,1,2")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<model>-<preset>-seed<seed>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override any config key, e.g. --set pretrain.epochs=3 --set data.train_size=2000 "
                             "(sections: model, data, pretrain, retrain, unlearn; --list-keys prints every key); "
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
    parser.add_argument("--list-keys", action=ListKeys, nargs=0,
                        help="print every key --set and --config accept (section.key, type, default) and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="run again into a run folder that holds finished results for another configuration")

    def error(message: str) -> None:  # argparse's own errors: one line, exit 2, no usage dump
        raise UserError(f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        join_job(args)  # before anything touches a device
        overrides = {}
        if args.dataset is not None:
            overrides["data.dataset"] = args.dataset
        if args.data_dir is not None:
            overrides["data.data_dir"] = args.data_dir
        if args.forget_class is not None:
            classes = [c.strip() for c in args.forget_class.split(",") if c.strip()]
            if not classes or not all(c.lstrip("-").isdigit() for c in classes):
                raise UserError(f"--forget-class {args.forget_class!r}: pass a class number or a list such as 3,5,7")
            overrides["data.forget_class"] = int(classes[0])
            if len(classes) > 1:
                overrides["data.forget_classes"] = [int(c) for c in classes]
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.forget_fraction is not None:
            overrides["data.forget_fraction"] = args.forget_fraction
        if args.devices is not None:
            overrides["devices"] = args.devices
        if args.weights is not None:
            overrides["model.weights"] = args.weights
        if args.paradigms is not None:
            overrides["unlearn.paradigms"] = args.paradigms
        if args.eval_models is not None:
            overrides["unlearn.eval_models"] = args.eval_models
        if args.epochs is not None:
            overrides["unlearn.epochs"] = args.epochs
        if args.forget_each is not None:
            if args.forget_class is not None:
                raise UserError("--forget-each and --forget-class exclude each other: --forget-each runs one experiment "
                                "per class; --forget-class N,M,... forgets classes one request after another")
            if args.forget_fraction is not None:
                raise UserError("--forget-each (class-wise forgetting) and --forget-fraction (random samples) exclude "
                                "each other: choose one")
        cfg = build_config(args.model, args.preset, args.config, overrides, args.sets)
        return run(cfg, args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: the disk is full ({exc.filename or 'writing the run folder'}): free some space and run the "
              "same command again; it resumes from the last finished epoch", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def join_job(args: argparse.Namespace) -> None:
    """Join the multi-process job the flags or the environment describe (nothing to do for one process)."""
    from prunelora_keras import multihost, pipeline

    job = multihost.detect_job(args.coordinator, args.num_processes, args.process_id)
    if job is None:
        return
    import keras

    if keras.backend.backend() != "jax":
        raise UserError(f"a multi-process run ({job.describe()}) runs on the jax backend only; unset KERAS_BACKEND "
                        f"(now {keras.backend.backend()})")
    if args.coordinator_timeout <= 0:
        raise UserError(f"--coordinator-timeout {args.coordinator_timeout:g}: pass a positive number of seconds")
    multihost.join(job, args.coordinator_timeout)
    pipeline.log(f"joined {job.describe()}: {multihost.process_count()} processes, "
                 f"{len(jax_devices())} devices in all ({len(jax_devices(local=True))} here)")


def jax_devices(local: bool = False) -> list:
    import jax

    return jax.local_devices() if local else jax.devices()


def finished_results(out_dir: Path, cfg, overwrite: bool) -> dict | None:
    """The results a run folder already holds for ``cfg`` (None if it holds none).

    A folder holding another configuration's results is refused unless ``overwrite``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pass a folder")
    previous = out_dir / "results.json"
    if not previous.is_file() or overwrite:
        return None
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("config") == cfg.to_dict():
        return old
    raise UserError(f"{out_dir} holds results of another configuration ({config_diff(old.get('config') or {}, cfg.to_dict())}):"
                    " pass --overwrite or choose another --out")


def config_diff(old: dict, new: dict, limit: int = 3) -> str:
    """The first ``limit`` keys whose values differ, as ``key old -> new`` (dotted keys, sorted)."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k} {json.dumps(a.get(k, '<unset>'))} -> {json.dumps(b.get(k, '<unset>'))}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more if parts else "another version's layout"


def run(cfg, args: argparse.Namespace) -> int:
    import keras

    from prunelora_keras import pipeline

    if not pipeline.on_jax():
        needs_jax = methods.jax_only(cfg.unlearn.paradigms)
        if needs_jax:
            raise UserError(f"{', '.join(needs_jax)} run on the jax backend only; unset KERAS_BACKEND (now "
                            f"{keras.backend.backend()}) or drop them from --paradigms")
        pipeline.log(f"backend {keras.backend.backend()}: training with Keras's fit (the compiled JAX loop, resume "
                     "within a stage, the prefix cache and data-parallel training need the jax backend)")
    seeds = None
    if args.seeds is not None:
        from prunelora_keras.seeds import parse_seeds

        try:
            seeds = parse_seeds(args.seeds)
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: pass distinct non-negative integers, e.g. --seeds 0,1,2") from None
    if args.forget_each is not None:
        return run_each_class(cfg, args, seeds)
    if seeds is None:
        out_dir = Path(args.out or f"runs/{cfg.model.name}-{cfg.preset}-seed{cfg.seed}")
        share_run_folder(out_dir)
        results = run_one(cfg, out_dir, args.overwrite)
        print(pipeline.summary(results))
        print(f"results: {out_dir / 'results.json'}  ({results['wall_s']:.0f} s)", file=sys.stderr)
        return 0
    from prunelora_keras.report import fit_width, paper_table, write_report
    from prunelora_keras.seeds import aggregate

    out_dir = Path(args.out or f"runs/{cfg.model.name}-{cfg.preset}-seeds{'-'.join(map(str, seeds))}")
    share_run_folder(out_dir)
    runs = []
    for seed in seeds:  # each seed's run is complete, reusable and resumable in its own folder
        pipeline.log(f"--- seed {seed} ---")
        runs.append(run_one(dataclasses.replace(cfg, seed=seed), out_dir / f"seed{seed}", args.overwrite))
    folded = aggregate(runs)
    write_report(folded, out_dir)
    print(fit_width(paper_table(folded)))
    print(f"results: {out_dir / 'results.json'} (mean ± std over seeds {args.seeds}; each seed in "
          f"{out_dir}/seed<N>/, {folded['wall_s']:.0f} s in all)", file=sys.stderr)
    return 0


def share_run_folder(out_dir: Path) -> None:
    """Check ``--out`` is a folder (or new); in a multi-process job, make it the job's one run folder."""
    from prunelora_keras import multihost

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pass a folder")
    multihost.share_run_folder(out_dir)


def run_each_class(cfg, args: argparse.Namespace, seeds: list[int] | None) -> int:
    """``--forget-each``: one experiment per class (per seed), each in ``[seed<S>/]class<N>/``, sharing
    one original model per seed; folded into ``<out>/results.*`` and ``per_class.png``."""
    from prunelora_keras import pipeline, sweep
    from prunelora_keras.data import load_dataset

    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    classes = sweep.parse_classes(args.forget_each, ds.num_classes, ds.name)
    seed_list = seeds if seeds is not None else [cfg.seed]
    name = "all" if args.forget_each.strip() == "all" else "-".join(map(str, classes))
    out_dir = Path(args.out or f"runs/{cfg.model.name}-{cfg.preset}-each{name}-seed{'-'.join(map(str, seed_list))}")
    share_run_folder(out_dir)
    for c in classes:  # every request valid (e.g. a class without images in the subsample) before anything trains
        pipeline.load_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, forget_class=c)), ds)
    runs = []
    for seed in seed_list:
        seed_dir = out_dir / f"seed{seed}" if seeds is not None else out_dir
        seed_runs = []
        for c in classes:
            pipeline.log(f"--- seed {seed}, forget class {c} ({ds.class_names[c]}) ---")
            cfg_c = dataclasses.replace(cfg, seed=seed, data=dataclasses.replace(cfg.data, forget_class=c))
            seed_runs.append(run_one(cfg_c, seed_dir / f"class{c}", args.overwrite, seed_dir / "checkpoints", ds))
        if seeds is not None and len(seed_list) > 1:
            sweep.write_class_report(sweep.fold_classes(seed_runs), seed_dir)
        runs += seed_runs
    folded = sweep.fold_classes(runs)
    sweep.write_class_report(folded, out_dir)
    print(sweep.summary(folded))
    print(f"results: {out_dir / 'results.json'} (mean ± std over classes {classes}"
          f"{'' if seeds is None else f' and seeds {seed_list}'}; each class in {out_dir}/"
          f"{'seed<S>/' if seeds is not None else ''}class<N>/, {folded['wall_s']:.0f} s in all)", file=sys.stderr)
    return 0


def run_one(cfg, out_dir: Path, overwrite: bool, original_dir: Path | None = None, ds=None) -> dict:
    """One seed's whole experiment into ``out_dir`` (or the results it already holds).

    ``original_dir``: where the original model's checkpoint is shared (``--forget-each``);
    ``ds``: the data set when already loaded."""
    from prunelora_keras import multihost, pipeline

    old = finished_results(out_dir, cfg, overwrite)
    if old is not None:
        pipeline.log(f"{out_dir} already holds finished results for this configuration")
        return old
    ds, split = pipeline.load_data(cfg, ds)  # fail on data problems before anything trains
    if not pipeline.has_accelerator() and cfg.preset == "paper" and pipeline.on_jax():
        seconds = estimate_train_seconds(cfg, len(split.train), len(split.retain), ds.image_shape, ds.num_classes)
        pipeline.log(f"warning: no GPU found; the paper preset trains {cfg.model.name} at full scale, "
                     f"roughly {seconds / 3600:.0f} h on this CPU. For a CPU-sized run use --preset cpu "
                     "(CIFAR-10) or --preset quick (digits).")
    need = checkpoint_bytes(cfg, ds.num_classes, ds.image_shape)
    check_disk(out_dir, need)
    if multihost.is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.log(f"run folder: {out_dir} (checkpoints: about {need / 1e6:.0f} MB)  "
                 f"device: {pipeline.device_description()}")
    return pipeline.run_pipeline(cfg, out_dir, ds, split, original_dir)


if __name__ == "__main__":
    sys.exit(main())
