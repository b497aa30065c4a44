"""A new user's first hour (issue 39, item 16): a misspelled backend, the help text, Ctrl-C, a failed
--weights run, what the closing line and the run-folder line say, trial numbers, "1 epoch"."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, clean_env
from test_run import TINY


@pytest.mark.parametrize("value, fix", [("JAX", "set jax (lower case)"), ("jaxx", "set jax (lower case)"),
                                        ("pytorch", "set torch (lower case)")])
def test_a_misspelled_keras_backend_is_one_line_in_the_command_and_the_library(value, fix):
    proc = subprocess.run([sys.executable, "-m", "prunelora_keras.run", "--model", "vit", "--preset", "quick"],
                          env={**clean_env(), "KERAS_BACKEND": value}, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: KERAS_BACKEND={value!r} is not a Keras backend: {fix}, or unset it (this package then uses jax)"]
    proc = subprocess.run([sys.executable, "-c", "import prunelora_keras, keras"], env={**clean_env(), "KERAS_BACKEND": value},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(
        f"prunelora_keras.errors.BackendUnavailable: KERAS_BACKEND={value!r} is not a Keras backend")


def test_help_text(capsys):
    from prunelora_keras.evaluation.settings import EvalConfig, check_eval
    from prunelora_keras.experiment.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m prunelora_keras.run --model {") and "required: --model" in text
    assert "(S even, >= 6)" in text
    check_eval(EvalConfig(ulira=6), where="")  # what the help promises is what the check accepts
    with pytest.raises(Exception, match=">= 6"):
        check_eval(EvalConfig(ulira=4), where="")


def test_ctrl_c_says_that_running_the_same_command_again_resumes(monkeypatch, capsys):
    from prunelora_keras.experiment import run

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run", interrupted)
    assert run.main(["--model", "vit", "--preset", "quick", "--out", "/tmp/never-written"]) == 130
    assert "interrupted: run the same command again to resume" in capsys.readouterr().err


def test_a_failed_weights_run_leaves_no_empty_run_folder(tmp_path, capsys):
    from prunelora_keras.experiment.run import main

    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    out = tmp_path / "run"
    assert main(["--model", "vit", *TINY, "--weights", str(tmp_path / "junk.keras"), "--out", str(out)]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # a folder the user made: never removed
    assert main(["--model", "vit", *TINY, "--weights", str(tmp_path / "junk.keras"), "--out", str(out)]) == 2
    assert out.is_dir()


def test_the_run_folder_line_gives_the_checkpoints_not_the_report_slack(tmp_path):
    from prunelora_keras.experiment.budget import REPORT_SLACK_BYTES, checkpoint_bytes
    from prunelora_keras.experiment.config import build_config

    need = checkpoint_bytes(build_config("vit", "quick"), 10, (8, 8, 3))
    assert need < 5e6 < REPORT_SLACK_BYTES  # the quick ViT's checkpoints are small; the slack is not theirs


def test_result_files_names_everything_the_folder_holds(tmp_path):
    from prunelora_keras.experiment.run import result_files

    for name in ("results.json", "results.csv", "results.md", "losses.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert result_files(tmp_path) == "losses.png, results.csv, results.json, results.md"


def test_one_epoch_is_singular():
    from prunelora_keras.experiment.terminal import closing_lines

    rows = [{"paradigm": "retrain", "epochs": 1, "avg_gap": 0.0}, {"paradigm": "lora", "epochs": 1, "avg_gap": 2.0}]
    text = closing_lines({"rows": rows, "data": {}, "config": {}})
    assert "2.00 points at 1 epoch." in text and "1 epochs" not in text


def test_a_plugin_whose_own_import_fails_is_named_as_such(tmp_path):
    from prunelora_keras.errors import UserError
    from prunelora_keras.experiment.plugins import load_plugins

    (tmp_path / "needs.py").write_text("import no_such_dependency_here\n")
    with pytest.raises(UserError, match=r"needs.py failed while importing \(No module named 'no_such_dependency_here'\)"):
        load_plugins([str(tmp_path / "needs.py")])
    with pytest.raises(UserError, match="no such file"):
        load_plugins([str(tmp_path / "absent.py")])


def test_an_empty_keras_backend_is_unset_not_refused():
    from prunelora_keras.errors import unknown_backend

    assert unknown_backend("") is None and unknown_backend("jax") is None and unknown_backend("Jax") is not None
