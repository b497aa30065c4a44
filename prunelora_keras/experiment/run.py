"""The command: ``python -m prunelora_keras.run --model vit [--preset quick] ...``.

Parses arguments, resolves and validates a typed ``Config``, runs the pipeline into a run
folder and prints the results table. Bad input ends with one line on stderr and exit code 2.

Every check that needs no data (the arguments, the configuration of every seed and class, the run
folder) runs before Keras, JAX or scikit-learn is imported: this module and what it imports at the
top stay light, so ``--help`` and a misspelled name are answered in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shutil
import sys
from pathlib import Path

from prunelora_keras.experiment.arguments import list_keys, overrides, parse_args, sources  # noqa: F401
from prunelora_keras.experiment.budget import check_disk, check_out_dir, checkpoint_bytes, estimate_train_seconds
from prunelora_keras.experiment.config import MODEL_NAMES, build_config, validate
from prunelora_keras.experiment.identity import config_tag, preset_difference, same_config
from prunelora_keras.experiment.plugins import load_plugins
from prunelora_keras.methods.options import did_you_mean
from prunelora_keras.parallel.jobs import Job, detect_job
from prunelora_keras.errors import (BackendUnavailable, TrainingFailed, UserError, backend_unavailable,
                                   unknown_backend)

EXIT_USAGE = 2
EXIT_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        wrong = unknown_backend()
        if wrong is not None:
            raise wrong
        load_plugins(args.plugin)  # a user's registered methods, before any name is checked
        if args.model is None and not args.list_keys:
            raise UserError("the following arguments are required: --model (see --help)")
        model = args.model if args.model is not None else "resnet50"
        if model not in MODEL_NAMES:
            raise UserError(f"argument --model: invalid choice: {model!r}{did_you_mean(model, MODEL_NAMES)}; choose "
                            f"one of {', '.join(MODEL_NAMES)}")
        cfg = build_config(model, args.preset, args.config, overrides(args), args.sets)
        if args.list_keys:
            try:
                print(list_keys(cfg, sources(args)), flush=True)
            except BrokenPipeError:  # `--list-keys | head`: the reader has all it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        seeds = seed_list(cfg, args.seeds)
        plan_class_sweep(cfg, args, seeds)
        out_dir = out_folder(cfg, args, seeds)
        default = None if args.out else preset_difference(cfg)  # said with the run folder, once the data loaded
        args.folder_note = "" if default is None else f"; the {cfg.preset} preset with {config_diff(default, cfg.to_dict(), 4)}"
        job = detect_job(args.coordinator, args.num_processes, args.process_id)  # no JAX: the checks stay light
        writer = writes_run_folder(job)
        check_out_dir(out_dir, probe=writer is True)  # a path that cannot hold the run folder: before anything heavy
        join_job(job, args)  # before anything touches a device
        if writer is None:  # JAX named this process only now: only the writer probes the folder
            from prunelora_keras.parallel import multihost

            check_out_dir(out_dir, probe=multihost.is_writer())
        return run(cfg, args, seeds, out_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (BackendUnavailable, ImportError) as exc:  # Keras's backend is not installed: one line naming the fix
        err = exc if isinstance(exc, BackendUnavailable) else backend_unavailable(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: the disk is full ({exc.filename or 'writing the run folder'}): free some space and run the "
              "same command again; it resumes from the last finished epoch", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume (finished stages are reused, a stage in training "
              "restarts from its last finished epoch)", file=sys.stderr)
        return 130


def seed_list(cfg, text: str | None) -> list[int] | None:
    """``--seeds``: the seeds, each seed's configuration validated (its range, say) before any trains."""
    if text is None:
        return None
    from prunelora_keras.experiment.seeds import parse_seeds

    try:
        seeds = parse_seeds(text)
    except ValueError:
        raise UserError(f"--seeds {text!r}: pass distinct non-negative integers, e.g. --seeds 0,1,2") from None
    for seed in seeds:
        try:
            validate(dataclasses.replace(cfg, seed=seed))
        except UserError as exc:
            raise UserError(f"--seeds {text!r}: seed {seed}: {exc}") from None
    return seeds


def plan_class_sweep(cfg, args: argparse.Namespace, seeds: list[int] | None) -> None:
    """``--forget-each``: its syntax, and every (seed, class) configuration validated before anything
    loads or trains (whether each class is in the data set is checked once the data is loaded)."""
    if args.forget_each is None:
        return
    from prunelora_keras.experiment import sweep

    classes = sweep.parse_class_request(args.forget_each)
    for seed in seeds if seeds is not None else [cfg.seed]:
        for c in classes or []:
            try:
                validate(class_config(cfg, seed, c))
            except UserError as exc:
                raise UserError(f"--forget-each {args.forget_each!r}: class {c}, seed {seed}: {exc}") from None


def class_config(cfg, seed: int, forget_class: int):
    """The configuration of one (seed, class) run of ``--forget-each``."""
    return dataclasses.replace(cfg, seed=seed, data=dataclasses.replace(cfg.data, forget_class=forget_class))


def out_folder(cfg, args: argparse.Namespace, seeds: list[int] | None) -> Path:
    """The run folder: ``--out``, or one named after model, preset, seeds (and the classes of a sweep),
    with ``config_tag``'s suffix when the configuration is not the preset's own."""
    if args.out:
        return Path(args.out)
    tag = config_tag(cfg)
    if args.forget_each is not None:
        from prunelora_keras.experiment import sweep

        classes = sweep.parse_class_request(args.forget_each)
        name = "all" if classes is None else "-".join(map(str, classes))
        seed_names = seeds if seeds is not None else [cfg.seed]
        return Path(f"runs/{cfg.model.name}-{cfg.preset}-each{name}-seed{'-'.join(map(str, seed_names))}{tag}")
    if seeds is not None:
        return Path(f"runs/{cfg.model.name}-{cfg.preset}-seeds{'-'.join(map(str, seeds))}{tag}")
    return Path(f"runs/{cfg.model.name}-{cfg.preset}-seed{cfg.seed}{tag}")


def writes_run_folder(job: Job | None) -> bool | None:
    """Whether this process writes the run folder (process 0, or the only one: ``job`` is None); None
    when JAX has yet to say which process this is (``--num-processes auto``)."""
    if job is None:
        return True
    if job.process_id is None:
        return None
    return job.process_id == 0


def join_job(job: Job | None, args: argparse.Namespace) -> None:
    """Join the multi-process ``job`` (``jobs.detect_job``; None: one process, nothing to do)."""
    if job is None:
        return
    from prunelora_keras.parallel import multihost

    import keras

    from prunelora_keras.experiment import pipeline

    if keras.backend.backend() != "jax":
        raise UserError(f"a multi-process run ({job.describe()}) runs on the jax backend only; unset KERAS_BACKEND "
                        f"(now {keras.backend.backend()})")
    if args.coordinator_timeout <= 0:
        raise UserError(f"--coordinator-timeout {args.coordinator_timeout:g}: pass a positive number of seconds")
    multihost.join(job, args.coordinator_timeout)
    import jax

    pipeline.log(f"joined {job.describe()}: {jax.process_count()} processes, "
                 f"{len(jax.devices())} devices in all ({len(jax.local_devices())} here)")


def finished_results(out_dir: Path, cfg, overwrite: bool) -> dict | None:
    """The results a run folder already holds for ``cfg`` (None if it holds none).

    A folder holding another configuration's results is refused unless ``overwrite``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pass a folder")
    previous = out_dir / "results.json"
    if not previous.is_file():
        return None
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        old = {}
    same = same_config(old.get("config") or {}, cfg.to_dict())
    if same and not overwrite:
        return old
    if overwrite:
        whose = "this configuration" if same else f"another configuration: {config_diff(old.get('config') or {}, cfg.to_dict())}"
        print(f"--overwrite: {out_dir}'s results, tables and plots ({whose}) are replaced; its checkpoints stay, and "
              "those of this configuration are reused", file=sys.stderr, flush=True)
        return None
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


def run(cfg, args: argparse.Namespace, seeds: list[int] | None, out_dir: Path) -> int:
    """The heavy part: train and evaluate into ``out_dir`` (arguments already checked) and print the tables."""
    import keras

    from prunelora_keras import methods
    from prunelora_keras.experiment import pipeline
    from prunelora_keras.training.checkpoint import step_fault_point
    from prunelora_keras.training.epochs import set_step_hook

    if os.environ.get("PRUNELORA_KILL_AT"):  # the tests' mid-epoch crash, before a chosen step
        set_step_hook(step_fault_point)
    if not pipeline.on_jax():
        needs_jax = methods.jax_only(cfg.unlearn.paradigms)
        if needs_jax:
            raise UserError(f"{', '.join(needs_jax)} run on the jax backend only; unset KERAS_BACKEND (now "
                            f"{keras.backend.backend()}) or drop them from --paradigms")
        pipeline.log(f"backend {keras.backend.backend()}: training with Keras's fit (the compiled JAX loop, resume "
                     "within a stage, the prefix cache and data-parallel training need the jax backend)")
    if args.forget_each is not None:
        return run_each_class(cfg, args, seeds, out_dir)
    if seeds is None:
        share_run_folder(out_dir)
        results = run_one(cfg, out_dir, args.overwrite, note=getattr(args, "folder_note", ""))
        print(pipeline.summary(results))
        print(f"results in {out_dir}/: {result_files(out_dir)} ({results['wall_s']:.0f} s)", file=sys.stderr)
        return 0
    from prunelora_keras.experiment.terminal import fit_width
    from prunelora_keras.experiment.report import paper_table, write_report
    from prunelora_keras.experiment.seeds import aggregate
    from prunelora_keras.experiment.terminal import closing_lines

    share_run_folder(out_dir)
    runs = []
    for seed in seeds:  # each seed's run is complete, reusable and resumable in its own folder
        pipeline.log(f"--- seed {seed} ---")
        runs.append(run_one(dataclasses.replace(cfg, seed=seed), out_dir / f"seed{seed}", args.overwrite,
                            note=getattr(args, "folder_note", "")))
    folded = aggregate(runs)
    write_report(folded, out_dir)
    print(fit_width(paper_table(folded) + "\n\n" + closing_lines(folded)))
    print(f"results in {out_dir}/: {result_files(out_dir)} (mean ± std over seeds {args.seeds}; each seed in "
          f"{out_dir}/seed<N>/, {folded['wall_s']:.0f} s in all)", file=sys.stderr)
    return 0


def result_files(out_dir: Path) -> str:
    """The run folder's results as the closing line lists them: JSON, CSV, the markdown table, the plots.

    Args:
        out_dir: the run folder.
    Returns:
        The file names, sorted and comma-separated (a note when there are none).

    Example:
        >>> result_files(Path("runs/vit-quick-seed0"))  # doctest: +SKIP
        'loss_histograms.png, metrics.png, results.csv, results.json, results.md'
    """
    if not out_dir.is_dir():  # a process of a multi-process job that does not see the writer's folder
        return "written by process 0"
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.suffix in (".json", ".csv", ".md", ".png"))
    return ", ".join(names) if names else "none written (see the errors above)"


def share_run_folder(out_dir: Path) -> None:
    """Check ``--out`` is a folder (or new); in a multi-process job, make it the job's one run folder."""
    from prunelora_keras.parallel import multihost

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pass a folder")
    multihost.share_run_folder(out_dir)


def run_each_class(cfg, args: argparse.Namespace, seeds: list[int] | None, out_dir: Path) -> int:
    """``--forget-each``: one experiment per class (per seed), each in ``[seed<S>/]class<N>/``, sharing
    one original model per seed; folded into ``<out>/results.*`` and ``per_class.png``."""
    from prunelora_keras.experiment import pipeline, sweep
    from prunelora_keras.data.sources import load_dataset

    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, labels=cfg.data.labels,
                      image_size=cfg.data.image_size)
    classes = sweep.parse_classes(args.forget_each, ds.num_classes, ds.name)
    seed_list = seeds if seeds is not None else [cfg.seed]
    for seed in seed_list:  # every (seed, class) configuration valid before anything trains
        for c in classes:
            validate(class_config(cfg, seed, c))
    share_run_folder(out_dir)
    for c in classes:  # every request valid (e.g. a class without images in the subsample) before anything trains
        pipeline.load_data(class_config(cfg, cfg.seed, c), ds)
    runs = []
    for seed in seed_list:
        seed_dir = out_dir / f"seed{seed}" if seeds is not None else out_dir
        seed_runs = []
        for c in classes:
            pipeline.log(f"--- seed {seed}, forget class {c} ({ds.class_names[c]}) ---")
            cfg_c = class_config(cfg, seed, c)
            seed_runs.append(run_one(cfg_c, seed_dir / f"class{c}", args.overwrite, seed_dir / "checkpoints", ds,
                                     note=getattr(args, "folder_note", "")))
        if seeds is not None and len(seed_list) > 1:
            sweep.write_class_report(sweep.fold_classes(seed_runs), seed_dir)
        runs += seed_runs
    folded = sweep.fold_classes(runs)
    sweep.write_class_report(folded, out_dir)
    print(sweep.summary(folded))
    print(f"results in {out_dir}/: {result_files(out_dir)} (mean ± std over classes {classes}"
          f"{'' if seeds is None else f' and seeds {seed_list}'}; each class in {out_dir}/"
          f"{'seed<S>/' if seeds is not None else ''}class<N>/, {folded['wall_s']:.0f} s in all)", file=sys.stderr)
    return 0


def run_one(cfg, out_dir: Path, overwrite: bool, original_dir: Path | None = None, ds=None, note: str = "") -> dict:
    """One seed's whole experiment into ``out_dir`` (or the results it already holds).

    ``original_dir``: where the original model's checkpoint is shared (``--forget-each``);
    ``ds``: the data set when already loaded; ``note``: what the run-folder line adds (how a default
    folder's configuration differs from its preset)."""
    from prunelora_keras.parallel import multihost
    from prunelora_keras.experiment import pipeline

    try:
        old = finished_results(out_dir, cfg, overwrite)
    except UserError:  # a missing data folder is the first thing to fix: said before the run folder's conflict
        if cfg.data.dataset.startswith("folder:"):  # (a cheap check: no data set is loaded or downloaded for it)
            from prunelora_keras.data.readers import check_folder_source

            check_folder_source(cfg.data.dataset[len("folder:"):])
        raise
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
    created = multihost.is_writer() and not out_dir.exists()
    if multihost.is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.log(f"run folder: {out_dir} (checkpoints: at most about {need / 1e6:.{0 if need >= 1e7 else 1}f} MB{note})  "
                 f"device: {pipeline.device_description()}")
    try:
        return pipeline.run_pipeline(cfg, out_dir, ds, split, original_dir)
    except BaseException:
        if created and not any(p.is_file() for p in out_dir.rglob("*")):  # failed before writing anything (bad
            shutil.rmtree(out_dir, ignore_errors=True)                     # --weights, say): leave no empty folder
        raise


if __name__ == "__main__":
    sys.exit(main())
