import json
import subprocess
import sys
import numpy as np

import pytest

from conftest import REPO, clean_env
from prunelora_keras.run import main

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
    (["--model", "vit", "--preset", "quick", "--data-dir", "/no/such/path"], "applies to --dataset cifar10 only"),
    (["--model", "vit", "--preset", "quick", "--set", "pretrain.bogus=1"], "unknown key pretrain.bogus"),
    (["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=three"], "expected an integer"),
    (["--model", "vit", "--preset", "nope"], "unknown preset 'nope'"),
    (["--model", "vit", "--preset", "quick", "--set", "model.patch_size=3"], "does not divide"),
    (["--model", "vit", "--preset", "quick", "--dataset", "mnist"], "unknown dataset 'mnist'"),
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

    from prunelora_keras.run import parse_args

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

    from prunelora_keras.config import SECTIONS

    with pytest.raises(SystemExit) as exc:
        main(["--list-keys"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for section, cls in SECTIONS.items():  # an independent enumeration of the dataclasses' fields
        for f in dataclasses.fields(cls):
            line = next((x for x in lines if x.split()[:1] == [f"{section}.{f.name}"]), None)
            assert line is not None, f"{section}.{f.name}"
    assert any(x.split()[:3] == ["unlearn.lr", "float", "0.001"] for x in lines)
    assert any(x.split()[:2] == ["seed", "int"] for x in lines)


def test_cifar_not_found_names_the_fixes(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    import keras

    def no_network():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    code, _, err = run_main(capsys, ["--model", "vit", "--preset", "cpu", "--out", str(tmp_path / "r")])
    assert code == 2 and "--data-dir" in err and "--preset quick" in err


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
    assert len(models) == 2 and len(sidecars) == 2 and len(ckpts) == 4, ckpts

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

    from prunelora_keras.config import build_config
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
