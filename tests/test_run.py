import json
import subprocess
import sys
from pathlib import Path
import numpy as np

import pytest

from conftest import REPO, clean_env
from prunelora_keras.experiment.run import main

TINY = ["--preset", "quick", "--set", "pretrain.epochs=2", "--set", "model.dim=16", "--set", "model.depth=1",
        "--set", "model.heads=2", "--set", "model.mlp_dim=16", "--set", "data.train_size=300"]


def run_main(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["--model", "vgg16"], "invalid choice: 'vgg16'"),
    (["--model", "vit", "--preset", "quick", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"],
     "--data-dir /nonexistent/cifar does not exist"),
    (["--model", "vit", "--preset", "quick", "--forget-class", "12"], "--forget-class 12 is out of range"),
    (["--model", "vit", "--preset", "quick", "--data-dir", "/no/such/path"], "applies to --dataset cifar10, cifar100, svhn, tinyimagenet"),
    (["--model", "vit", "--preset", "quick", "--set", "pretrain.bogus=1"], "unknown key pretrain.bogus"),
    (["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=three"], "pretrain.epochs must be an integer"),
    (["--model", "vit", "--preset", "nope"], "unknown preset 'nope'"),
    (["--model", "vit", "--preset", "quick", "--set", "model.patch_size=3"], "does not divide"),
    (["--model", "vit", "--preset", "quick", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    # a misspelled name: the bad token and the closest valid one
    (["--model", "resnet"], "invalid choice: 'resnet' (did you mean 'resnet50'?)"),
    (["--model", "vit", "--preset", "quick", "--paradigms", "retrain,prunedlora"],
     "'prunedlora' is not a method (did you mean 'pruned_lora'?)"),
    (["--model", "vit", "--preset", "quck"], "unknown preset 'quck' (did you mean 'quick'?)"),
    (["--model", "vit", "--preset", "quick", "--dataset", "digit"], "unknown dataset 'digit' (did you mean 'digits'?)"),
    (["--model", "vit", "--preset", "quick", "--set", "unlearn.precison=float32"],
     "unknown key unlearn.precison (did you mean 'precision'?)"),
    (["--model", "vit", "--preset", "quick", "--set", "unlern.bn=update"], "unknown key 'unlern.bn' (did you mean 'unlearn.bn'?)"),
    (["--model", "vit", "--preset", "quick", "--set", "lora.rnak=4"], "unknown hyperparameter lora.rnak (did you mean 'rank'?)"),
    (["--model", "vit", "--preset", "quick", "--set", "pretrain.schedule=cosin"], "(did you mean 'cosine'?)"),
    (["--model", "vit", "--preset", "quick", "--set", "finetune.optimizer=adamm"],
     "finetune.optimizer = 'adamm' is not valid: choose one of sgd, adam, adamw (did you mean 'adam'?)"),
    (["--model", "vit", "--preset", "quick", "--seeds", "0,4294967296"],
     "--seeds '0,4294967296': seed 4294967296: seed must be in 0..4294967294"),
    (["--model", "vit", "--preset", "quick", "--forget-each", "1,1"], "lists a class twice"),
    (["--list-keys", "--model", "vitt"], "invalid choice: 'vitt' (did you mean 'vit'?)"),
    (["--preset", "quick"], "required: --model"),
    (["--model", "vit", "--preset", "quick", "--out", "/proc/prunelora-x"],
     "--out /proc/prunelora-x cannot be created: /proc is not writable"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_main(capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_malformed_toml_config(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain]\nepochs = = 3\n")
    code, _, err = run_main(capsys, ["--model", "vit", "--preset", "quick", "--config", str(bad)])
    assert code == 2 and "is not valid TOML" in err and len(err.strip().splitlines()) == 1


def test_help_explains_every_option(capsys):
    import argparse

    from prunelora_keras.experiment.arguments import parse_args

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    parser_actions = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parser_actions.extend(self._actions)
        return original(self, args, namespace)

    argparse.ArgumentParser.parse_args = capture
    try:
        parse_args(["--model", "vit"])
    finally:
        argparse.ArgumentParser.parse_args = original
    options = [a.option_strings[-1] for a in parser_actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 18
    for action in parser_actions:  # every option is listed with a real explanation, not only its name
        if action.option_strings and action.dest != "help":
            assert action.option_strings[-1] in out and len(action.help or "") > 20, action.option_strings


def test_list_keys_prints_every_config_key_with_type_and_default(capsys):
    import dataclasses

    from prunelora_keras.experiment.config import SECTIONS

    assert main(["--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for section, cls in SECTIONS.items():  # an independent enumeration of the dataclasses' fields
        for f in dataclasses.fields(cls):
            line = next((x for x in lines if x.split()[:1] == [f"{section}.{f.name}"]), None)
            assert line is not None, f"{section}.{f.name}"
    from prunelora_keras.methods.builtin_hparams import BUILTIN_HPARAMS

    for method, cls in BUILTIN_HPARAMS.items():  # every method's hyperparameters, from its dataclass
        for f in dataclasses.fields(cls):
            assert any(x.split()[:1] == [f"{method}.{f.name}"] for x in lines), f"{method}.{f.name}"
    assert any(x.split()[:3] == ["finetune.lr", "float", "0.001"] for x in lines)
    assert any(x.split()[:3] == ["scrub.lr_decay_epochs", "list[int]", "[3,"] for x in lines)
    assert any(x.split()[:2] == ["seed", "int"] for x in lines)


def test_list_keys_shows_the_values_this_run_would_use_and_the_allowed_values(capsys, tmp_path):
    """--preset, --config, flags and --set are applied (the quick preset's ViT pretrains 20 epochs,
    the dataclass default is 1); each string key lists its allowed values (config.CHOICES)."""
    from prunelora_keras.experiment.config import CHOICES, build_config

    extra = tmp_path / "extra.toml"
    extra.write_text("[methods.lora]\nrank = 4\n")
    argv = ["--list-keys", "--model", "vit", "--preset", "quick", "--config", str(extra), "--seed", "7",
            "--set", "lora.optimizer=sgd"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "--model vit, preset quick" in lines[0] and str(extra) in lines[0]
    value = {x.split()[0]: x.split()[2] for x in lines[2:]}
    expected = build_config("vit", "quick", str(extra), {"seed": 7}, ["lora.optimizer=sgd"])
    assert value["pretrain.epochs"] == str(expected.pretrain.epochs) == "20"
    assert value["data.dataset"] == '"digits"' and value["lora.rank"] == "4" and value["seed"] == "7"
    assert value["lora.optimizer"] == '"sgd"' and value["finetune.optimizer"] == '"adam"'
    assert value["pruned_lora.rank"] == "16" and value["lora.alpha"] == "32.0"  # the quick preset's ViT adapters
    assert "(one of: sgd, adam, adamw)" in next(x for x in lines if x.startswith("lora.optimizer "))
    for (section, name), choices in CHOICES.items():
        line = next(x for x in lines if x.split()[:1] == [f"{section}.{name}"])
        assert line.endswith("one of " + ", ".join(choices)), line
    paradigms = next(x for x in lines if x.startswith("unlearn.paradigms "))
    assert "any of retrain, finetune" in paradigms and "scrub" in paradigms


def test_cifar_not_found_names_the_fixes(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    import keras

    def no_network():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    code, _, err = run_main(capsys, ["--model", "vit", "--preset", "cpu", "--out", str(tmp_path / "r")])
    assert code == 2 and "--data-dir" in err and "--preset quick" in err


EARLY = """
import sys
from prunelora_keras.experiment.run import main
for argv in {cases!r}:
    print("rc", main(argv))
try:
    main(["--help"])
except SystemExit as exc:
    print("help", exc.code)
print("heavy", [m for m in ("keras", "jax", "sklearn", "optax", "matplotlib") if m in sys.modules])
"""


def test_arguments_are_checked_before_keras_jax_or_sklearn_is_imported(tmp_path):
    """--help and every argument error need no heavy import (they took 5-15 s, some after the data
    loaded; now a fraction of a second): the whole path runs without Keras, JAX or scikit-learn."""
    (tmp_path / "file").write_text("x")
    cases = [["--model", "resnet"], ["--model", "vit", "--preset", "quick", "--paradigms", "prunedlora"],
             ["--model", "vit", "--preset", "quick", "--seeds", "0,4294967296"],
             ["--model", "vit", "--preset", "quick", "--set", "scrub.lr=-1"],
             ["--model", "vit", "--preset", "quick", "--forget-each", "x"],
             ["--model", "vit", "--preset", "quick", "--out", str(tmp_path / "file" / "run")]]
    proc = _subprocess(EARLY.format(cases=cases), clean_env(), REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert out.count("rc 2") == len(cases) and "help 0" in out, proc.stdout
    assert out[-1] == "heavy []", out[-1]
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(cases) and all(e.startswith("error: ") for e in errors), proc.stderr


def test_out_that_cannot_hold_the_run_folder_is_one_line_before_anything_runs(capsys, tmp_path, monkeypatch):
    """A file as --out, a path through a file, an unwritable place: one error line naming the path
    and why, exit 2 (a path through a file ended in a NotADirectoryError traceback)."""
    import prunelora_keras.experiment.run as run

    monkeypatch.setattr(run, "run", lambda *a, **k: pytest.fail("ran despite a bad --out"))
    (tmp_path / "file").write_text("x")
    for out, why in ((tmp_path / "file", "is a file, not a directory"),
                     (tmp_path / "file" / "run", f"cannot be created: {tmp_path / 'file'} is a file, not a directory"),
                     (Path("/proc/prunelora/run"), "cannot be created: /proc is not writable")):
        code, _, err = run_main(capsys, ["--model", "vit", "--preset", "quick", "--out", str(out)])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --out {out}") and why in lines[0], err
    from prunelora_keras.experiment.budget import check_out_dir

    check_out_dir(tmp_path / "new" / "deeper")  # a folder that can be created passes, and is not created yet
    assert not (tmp_path / "new").exists() and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_only_the_writer_probes_the_run_folder(tmp_path, monkeypatch):
    """A process of a multi-process job other than 0 writes nothing in the run folder, not even the
    writability probe (the one-writer audit saw process 1's probe folder); it still refuses a file."""
    import tempfile

    import prunelora_keras.experiment.run as run
    from prunelora_keras.experiment.budget import check_out_dir

    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(k.get("dir")) or real(*a, **k))
    check_out_dir(tmp_path, probe=False)
    assert made == []
    with pytest.raises(run.UserError, match="is a file"):
        (tmp_path / "f").write_text("x")
        check_out_dir(tmp_path / "f", probe=False)
    check_out_dir(tmp_path)
    assert made == [tmp_path] and [p.name for p in tmp_path.iterdir()] == ["f"]
    ns = run.parse_args(["--model", "vit", "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                                        "--process-id", "1"])
    job = run.detect_job(ns.coordinator, ns.num_processes, ns.process_id)
    assert run.writes_run_folder(job) is False and run.writes_run_folder(None) is True
    auto = run.parse_args(["--model", "vit", "--num-processes", "auto"])
    assert run.writes_run_folder(run.detect_job(auto.coordinator, auto.num_processes, auto.process_id)) is None


def test_every_seed_is_validated_before_any_seed_trains(capsys, monkeypatch):
    """--seeds 0,4294967296 used to train seed 0 before seed 4294967296 failed (dataclasses.replace
    skips validate)."""
    import prunelora_keras.experiment.run as run

    trained = []
    monkeypatch.setattr(run, "run_one", lambda cfg, *a, **k: trained.append(cfg.seed))
    code, _, err = run_main(capsys, ["--model", "vit", "--preset", "quick", "--seeds", "0,4294967296"])
    assert code == 2 and trained == [] and "seed 4294967296" in err and len(err.strip().splitlines()) == 1


def test_default_run_folders_are_known_before_anything_loads():
    from prunelora_keras.experiment.arguments import parse_args
    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.experiment.run import out_folder

    cfg = build_config("vit", "quick")
    assert out_folder(cfg, parse_args(["--model", "vit"]), None) == Path("runs/vit-quick-seed0")
    assert out_folder(cfg, parse_args(["--model", "vit"]), [1, 2]) == Path("runs/vit-quick-seeds1-2")
    args = parse_args(["--model", "vit", "--forget-each", "3,5"])
    assert out_folder(cfg, args, None) == Path("runs/vit-quick-each3-5-seed0")
    assert out_folder(cfg, parse_args(["--model", "vit", "--out", "x/y"]), None) == Path("x/y")


def test_a_variation_of_the_first_command_runs_into_a_folder_of_its_own():
    """Issue 39: every flag but model, preset and seed used to land in runs/vit-quick-seed0 and be refused."""
    from prunelora_keras.experiment.arguments import overrides, parse_args
    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.experiment.run import out_folder

    def folder(*flags):
        args = parse_args(["--model", "vit", "--preset", "quick", *flags])
        return out_folder(build_config("vit", "quick", args.config, overrides(args), args.sets), args, None)

    assert folder() == Path("runs/vit-quick-seed0") and folder("--seed", "2") == Path("runs/vit-quick-seed2")
    variations = [folder("--forget-class", "5"), folder("--epochs", "5"), folder("--set", "unlearn.epochs=[2]"),
                  folder("--forget-class", "5", "--seed", "2")]
    assert len(set(variations)) == 4 and all(f.name.startswith("vit-quick-seed") and f.name.count("-") == 3
                                             for f in variations), variations
    assert folder("--forget-class", "5") == variations[0]  # the same command finds (and resumes) its own folder
    assert folder("--forget-class", "3") == folder()  # the preset's own class: the preset's folder


def test_a_data_problem_is_said_before_a_folder_of_another_configuration(tmp_path, capsys):
    from prunelora_keras.experiment.run import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({"config": {"seed": 7}}))
    code = main(["--model", "vit", "--preset", "quick", "--dataset", f"folder:{tmp_path / 'missing'}",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a folder" in err and "another configuration" not in err, err
    code = main(["--model", "vit", "--preset", "quick", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "holds results of another configuration" in err, err


def test_the_light_method_names_are_the_registrys_built_in_methods():
    """--help and the config's check read method_names before the methods are imported; once the
    registry is loaded they are the registry's (a user's own method included)."""
    from prunelora_keras import methods
    from prunelora_keras.methods import builtin_names as method_names

    registered = methods.names()
    assert tuple(n for n in registered if n in method_names.BUILTIN) == tuple(method_names.BUILTIN)
    assert all(methods.get(n).kind == kind for n, kind in method_names.BUILTIN.items())
    assert method_names.names() == registered and method_names.names("paper") == methods.names("paper")


def _subprocess(code: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_backend_is_jax_despite_keras_json(tmp_path):
    home = tmp_path / "home"
    (home / ".keras").mkdir(parents=True)
    (home / ".keras" / "keras.json").write_text(json.dumps({"backend": "tensorflow", "floatx": "float32",
                                                            "epsilon": 1e-07, "image_data_format": "channels_last"}))
    env = clean_env() | {"HOME": str(home), "KERAS_HOME": str(home / ".keras")}
    proc = _subprocess("import prunelora_keras, keras; print(keras.backend.backend())", env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "jax"
    # an explicit KERAS_BACKEND still wins
    proc = _subprocess("import prunelora_keras, keras; print(keras.backend.backend())",
                       env | {"KERAS_BACKEND": "numpy"}, tmp_path)
    assert proc.stdout.strip() == "numpy", proc.stderr


@pytest.mark.slow
def test_end_to_end_tiny_run_reuse_and_guard(capsys, tmp_path):
    out = tmp_path / "run"
    code, table, err = run_main(capsys, ["--model", "vit", *TINY, "--out", str(out)])
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert set(results["stages"]) == {"original", "retrain"}
    retrain = results["stages"]["retrain"]["accuracies"]
    assert retrain["forget"] == 0.0  # Retrain never saw the forget class
    assert results["config"]["pretrain"]["epochs"] == 2 and results["data"]["train"] == 300
    assert len(results["stages"]["original"]["history"]) == 2
    assert "| original |" in table and (out / "results.md").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    models = [name for name in ckpts if name.endswith(".keras")]
    sidecars = [name for name in ckpts if name.endswith(".history.json")]
    accuracies = [name for name in ckpts if ".acc-" in name and name.endswith(".json")]  # read back on reuse
    evaluations = [name for name in ckpts if ".eval-" in name and name.endswith(".npz")]  # the same
    assert len(models) == 2 and len(sidecars) == 2 and len(accuracies) == 2 and len(evaluations) == 2, ckpts
    assert len(ckpts) == 8, ckpts

    # same configuration again: finished results are shown, nothing retrains
    code, table2, err = run_main(capsys, ["--model", "vit", *TINY, "--out", str(out)])
    assert code == 0 and "already holds finished results" in err and table2.strip() == table.strip()

    # another configuration into the same folder: refused without --overwrite
    code, _, err = run_main(capsys, ["--model", "vit", *TINY, "--set", "retrain.epochs=1", "--out", str(out)])
    assert code == 2 and "--overwrite" in err
    assert "(retrain.epochs 2 -> 1)" in err  # names what differs, old -> new
    # with --overwrite: the original model is reused (same key), only Retrain trains again
    code, _, err = run_main(capsys, ["--model", "vit", *TINY, "--set", "retrain.epochs=1", "--out", str(out),
                                     "--overwrite"])
    assert code == 0 and "original: reusing" in err and "retrain: reusing" not in err
    assert "original: evaluation reused" in err and "retrain: evaluation reused" not in err  # a new Retrain
    assert "--overwrite: " + str(out) + "'s results, tables and plots (another configuration: retrain.epochs 2 -> 1) " \
        "are replaced" in err  # said before it is done
    again = json.loads((out / "results.json").read_text())
    assert again["stages"]["original"]["accuracies"] == results["stages"]["original"]["accuracies"]


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [
    ("vit", []),  # the README's main command, whole (the ResNet-50's quick run: benchmarks/results/quick-wall.txt)
])
def test_quick_preset_reaches_90_percent_on_digits(tmp_path, model, extra):
    """The README's main command, as a user runs it (a fresh process, no KERAS_BACKEND)."""
    proc = subprocess.run([sys.executable, "-m", "prunelora_keras.run", "--model", model, "--preset", "quick",
                           "--out", str(tmp_path / model), *extra], env=clean_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / model / "results.json").read_text())
    original = results["stages"]["original"]["accuracies"]
    assert original["test"] >= 90.0, original
    if not extra:
        assert results["stages"]["retrain"]["accuracies"]["forget"] == 0.0
        assert "| retrain |" in proc.stdout
        assert {r["paradigm"] for r in results["rows"]} == {"retrain", "finetune", "pruned", "lora", "pruned_lora"}
        assert {r["epochs"] for r in results["rows"]} == {5, 10}
    else:
        assert [(r["paradigm"], r["epochs"]) for r in results["rows"]] == [("pruned_lora", 1)]


def test_unlearning_from_the_users_own_pytorch_weights(capsys, tmp_path):
    """--weights: the original model is the given one (loaded safely), not pretrained."""
    import torch

    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.interop.torch import keras_to_state_dict
    from prunelora_keras.models import build_model

    cfg = build_config("vit", "quick", None, {}, TINY[3::2])
    model = build_model(cfg.model, 10, (8, 8, 3))
    weights = tmp_path / "mine.pt"
    torch.save(keras_to_state_dict(model), weights)
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["--model", "vit", *TINY, "--weights", str(weights), "--paradigms", "finetune",
                                     "--epochs", "1", "--out", str(out)])
    assert code == 0, err
    assert f"original: weights from {weights}" in err and "original epoch" not in err
    results = json.loads((out / "results.json").read_text())
    assert results["stages"]["original"]["history"] == [] and results["config"]["model"]["weights"] == str(weights)
    code, _, err = run_main(capsys, ["--model", "vit", *TINY, "--weights", str(tmp_path / "nope.pt"), "--out",
                                     str(tmp_path / "r2")])
    assert code == 2 and "is not a file" in err


@pytest.mark.slow
def test_seeds_run_everything_per_seed_and_report_mean_and_spread(capsys, tmp_path):
    out = tmp_path / "seeds"
    code, table, err = run_main(capsys, ["--model", "vit", *TINY, "--paradigms", "retrain,finetune", "--epochs", "1",
                                         "--seeds", "0,1", "--out", str(out)])
    assert code == 0, err
    folded = json.loads((out / "results.json").read_text())
    per_seed = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    assert folded["seeds"] == [0, 1] and [r["seed"] for r in per_seed] == [0, 1]
    ft = next(r for r in folded["rows"] if r["paradigm"] == "finetune")
    values = [next(r for r in run["rows"] if r["paradigm"] == "finetune")["RA"] for run in per_seed]
    assert ft["n_seeds"] == 2 and ft["RA"] == pytest.approx(np.mean(values)) and ft["RA_std"] == pytest.approx(np.std(values))
    assert "avg_gap_std" in ft and " ± " in table and (out / "metrics.png").is_file()
    assert "RA_std" in (out / "results.csv").read_text().splitlines()[0]
    code, _, err = run_main(capsys, ["--model", "vit", *TINY, "--seeds", "0,0", "--out", str(tmp_path / "bad")])
    assert code == 2 and "--seeds '0,0'" in err


def test_list_keys_into_a_reader_that_stops_early_ends_quietly():
    """``--list-keys | head -1``: the closed pipe is not an error (no traceback, exit 0)."""
    proc = subprocess.run(f"{sys.executable} -m prunelora_keras.run --list-keys --model vit | head -1", shell=True,
                          env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("values this run would use") and "Error" not in proc.stderr, proc.stderr


PLUGIN = '''
import dataclasses, optax
from prunelora_keras import methods
from prunelora_keras.methods.hparams import HParams, hparam, POSITIVE

@dataclasses.dataclass(frozen=True)
class HeadOnly(HParams):
    lr: float = hparam(1e-3, "learning rate", check=POSITIVE)

def prepare(ctx):
    head = ctx.model.get_layer(ctx.targets.classifier)
    return methods.Plan(model=ctx.model, train_vars=list(head.trainable_variables),
                        optimizer=optax.adam(ctx.hparams.lr), description="classifier only, on D_r",
                        x=ctx.retain.x, y=ctx.retain.y)

methods.register(methods.Method("head_only", "Head only", prepare, hparams=HeadOnly))
'''


@pytest.mark.slow
def test_a_users_registered_method_reaches_the_command_through_plugin(tmp_path):
    """Issue 39: docs/api.md promised it; the command, a process of its own, never saw the registration."""
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    base = [sys.executable, "-m", "prunelora_keras.run", "--model", "vit", *TINY, "--epochs", "1",
            "--set", "eval.relearn_max_steps=0", "--set", "data.test_size=100"]
    proc = subprocess.run([*base, "--paradigms", "head_only", "--out", str(tmp_path / "no")], env=clean_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "head_only" in proc.stderr and not (tmp_path / "no").exists()
    proc = subprocess.run([*base, "--plugin", str(tmp_path / "my_methods.py"), "--paradigms", "retrain,head_only",
                           "--set", "head_only.lr=0.01", "--out", str(tmp_path / "run")], env=clean_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["paradigm"] for r in results["rows"]] == ["retrain", "head_only"]
    assert results["config"]["methods"]["head_only"]["lr"] == 0.01
    # by module name on the Python path, and a module that is not there: one line
    env = {**clean_env(), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([*base, "--plugin", "my_methods", "--paradigms", "head_only", "--list-keys"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "head_only.lr" in proc.stdout, proc.stderr
    proc = subprocess.run([*base, "--plugin", "no_such_module_here", "--paradigms", "head_only"], env=clean_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --plugin no_such_module_here: No module named 'no_such_module_here'; pass a module on the Python path "
        "(run from its folder, or set PYTHONPATH) or the .py file's path"]
