"""The search (``python -m prunelora_keras.tune``): its checks, its validation split, its TOML, and a
two-trial search that reproduces, resumes and whose best-<method>.toml reproduces the tuned row."""

from __future__ import annotations

import csv
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from conftest import REPO, clean_env
from prunelora_keras.data.datasets import Subset, UnlearningSplit
from prunelora_keras.experiment import tune
from prunelora_keras.experiment.tune_report import key_path, toml_text
from test_many_models import assert_one_error_line

TINY = ["--model", "vit", "--preset", "quick", "--set", "data.train_size=400", "--set", "data.test_size=200",
        "--set", "pretrain.epochs=4", "--set", "pretrain.warmup_steps=4", "--set", "eval.relearn_max_steps=0", "--set", "eval.mia_members=200",
        "--set", "eval.mia_nonmembers=100"]


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "'nope' is not a method"),
    (["--method", "retrain"], "Retrain is the reference"),
    (["--method", "salun", "--trials", "0"], "--trials 0: pass at least 1"),
    (["--method", "salun", "--space", "lr,momentum"], "salun declares no search range for 'momentum'"),
    (["--method", "ssd", "--space", "epochs"], "ssd declares no search range for 'epochs'"),
    (["--method", "salun", "--objective", "acc"], "--objective 'acc' is not an objective"),
    (["--method", "salun", "--validation-fraction", "0.9"], "--validation-fraction 0.9"),
    (["--method", "salun", "--set", "eval.models=4"], "eval.models and eval.ulira are off during a search"),
    (["--method", "salun", "--forget-class", "3,5"], "pass one class"),
])
def test_bad_requests_end_with_one_error_line(args, message, capsys, tmp_path):
    assert tune.main(["--model", "vit", "--preset", "quick", "--out", str(tmp_path / "t"), *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "t").exists()


def test_the_command_refuses_bad_input_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "prunelora_keras.tune", "--model", "vit", "--method", "salun",
                           "--trials", "-1"], env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_error_line(proc, "--trials -1")


def test_the_validation_split_is_carved_from_the_training_data_only():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    x = np.arange(len(y))[:, None, None, None].astype(np.int64)  # each image is its own index
    train = Subset(x, y)
    test = Subset(np.full((20, 1, 1, 1), -1), rng.integers(0, 4, 20))
    split = UnlearningSplit(retain=Subset(x[y != 2], y[y != 2]), forget=Subset(x[y == 2], y[y == 2]),
                            test_retain=test, test_forget=test, train=train, test=test, forget_class=2,
                            forget_classes=(2,))
    v = tune.validation_split(split, 0.2, seed=0, forget_fraction=0.0)
    held, kept = set(v.test.x.ravel()), set(v.train.x.ravel())
    assert len(held) == 40 and not held & kept and held | kept == set(range(200))  # nothing of split.test
    assert np.bincount(v.test.y).tolist() == [10] * 4  # stratified
    assert set(v.forget.y) == {2} and 2 not in set(v.retain.y) and set(v.test_forget.y) == {2}
    random = tune.validation_split(split, 0.2, seed=0, forget_fraction=0.1)
    assert len(random.forget) == 16 and len(random.test_forget) == 0 and set(random.forget.y) == {0, 1, 2, 3}


def test_the_toml_writer_round_trips_and_keys_find_their_sections():
    tree = {"seed": 3, "models": {"vit": {"data": {"dataset": "digits", "forget_class": 3},
                                          "unlearn": {"epochs": [4], "paradigms": ["retrain", "ga"]},
                                          "methods": {"ga": {"lr": 1.5e-05}}}}}
    assert tomllib.loads(toml_text(tree)) == tree
    assert key_path("scrub.lr") == key_path("methods.scrub.lr") == ["methods", "scrub", "lr"]
    assert key_path("data.train_size") == ["data", "train_size"] and key_path("seed") == ["seed"]


def _trials(folder) -> list[dict]:
    with open(folder / "trials.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_search_reproduces_resumes_and_its_best_toml_reproduces_the_tuned_row(tmp_path, capsys):
    """Same seed, same trials, same best; a search stopped after one trial and run again to two equals the
    uninterrupted one; ``run --config best-ga.toml`` gives the tuned row of the untouched split."""
    pytest.importorskip("optuna")
    from prunelora_keras.experiment import run as run_command

    args = [*TINY, "--method", "ga", "--max-epochs", "2"]
    assert tune.main([*args, "--trials", "2", "--out", str(tmp_path / "a")]) == 0
    log = capsys.readouterr().err  # numbered as trials.csv numbers them (issue 39)
    assert "--- ga: trial 0 (1 of 2, the defaults): " in log and "ga: trial 1: avg_gap " in log
    assert tune.main([*args, "--trials", "1", "--out", str(tmp_path / "b")]) == 0
    assert tune.main([*args, "--trials", "2", "--out", str(tmp_path / "b")]) == 0
    first, resumed = _trials(tmp_path / "a"), _trials(tmp_path / "b")
    assert first == resumed and len(first) == 2
    assert first[0]["epochs"] == "2" and float(first[0]["lr"]) == pytest.approx(1e-4)  # trial 0: the defaults
    best = tomllib.loads((tmp_path / "a" / "best-ga.toml").read_text())["models"]["vit"]
    chosen = min(first, key=lambda t: float(t["value"]))
    assert best["methods"]["ga"]["lr"] == pytest.approx(float(chosen["lr"]))
    assert best["unlearn"]["epochs"] == [int(chosen["epochs"])]
    capsys.readouterr()
    import json

    tuned = json.loads((tmp_path / "a" / "tune.json").read_text())["methods"]["ga"]["tuned"]
    assert run_command.main(["--model", "vit", "--preset", "quick", "--config", str(tmp_path / "a" / "best-ga.toml"),
                             "--out", str(tmp_path / "run")]) == 0
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    row = [r for r in rows if r["paradigm"] == "ga"][0]
    for key in ("UA", "MIA_confidence_svc", "RA", "TA", "avg_gap", "epochs"):
        assert row[key] == tuned[key], key
    for name in ("trials.png", "tune.md", "trials.csv"):
        assert (tmp_path / "a" / name).stat().st_size > 0


def test_tune_method_searches_a_users_model_reproducibly_and_names_bad_keys():
    """The library's search: trial 0 is the defaults, the same call gives the same trials, the best is
    the best trial, a key the method does not declare is one ValueError."""
    pytest.importorskip("optuna")
    import keras
    import optax

    import prunelora_keras as plk
    from prunelora_keras.data.augment import Preprocess
    from prunelora_keras.training.loop import Trainer

    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = (rng.normal(size=(90, 4)) + np.eye(3, 4)[y] * 2).astype(np.float32)

    def trained(xs, ys, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Dense(8, activation="relu")(inputs)))
        Trainer(model, optax.adam(3e-2), num_classes=3, preprocess=Preprocess(), verbose=False).fit(xs, ys, 8, 16)
        return model

    tr, te = np.arange(90) < 60, np.arange(90) >= 60
    original, reference = trained(x[tr], y[tr], 0), trained(x[tr & (y != 0)], y[tr & (y != 0)], 1)
    data = ((x[tr & (y != 0)], y[tr & (y != 0)]), (x[tr & (y == 0)], y[tr & (y == 0)]), (x[te & (y != 0)], y[te & (y != 0)]))
    kw = dict(reference=reference, method="ga", trials=3, max_epochs=2, batch_size=16, verbose=False)
    a, b = plk.tune_method(original, *data, **kw), plk.tune_method(original, *data, **kw)
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    assert [t["value"] for t in a.trials] == [t["value"] for t in b.trials]
    assert a.trials[0]["params"] == {"lr": 1e-4, "epochs": 2}
    assert a.best_value == min(t["value"] for t in a.trials) and a.best_params == min(a.trials, key=lambda t: t["value"])["params"]
    with pytest.raises(ValueError, match="declares no search range for 'momentum'"):
        plk.tune_method(original, *data, reference=reference, method="ga", space=["momentum"], verbose=False)


def test_the_study_loop_is_seeded_resumes_after_a_kill_and_starts_from_the_defaults(tmp_path, monkeypatch):
    """``run_study`` on a synthetic objective: the same seed gives the same trials; a study whose process
    died in the middle of a trial (left RUNNING in its journal) continues to the same trials as one never
    interrupted; trial 0 is the defaults; another seed draws other trials."""
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from prunelora_keras.api.tune import run_study
    from prunelora_keras.methods.hparams import Search

    space = {"lr": Search("log", 1e-5, 1e-1), "epochs": Search("int", 1, 10), "rank": Search("choice", choices=(4, 8))}

    from prunelora_keras.training.caches import COMPILED

    def trial(params):
        COMPILED.put(("test_tune", len(params), params["lr"]), object())  # what a trial's compiled steps leave
        return abs(np.log10(params["lr"]) + 3) + abs(params["epochs"] - 4) + (params["rank"] == 8), {"status": "ok"}

    def study(path, n, seed=0):
        return run_study("m", space, {"lr": 1e-2, "epochs": 10, "rank": 8}, trial, trials=n, objective="avg_gap",
                         seed=seed, storage=str(path))

    import prunelora_keras.api.tune as api_tune

    release = api_tune.release_compiled
    monkeypatch.setattr(api_tune, "release_compiled", lambda: release(share=0.0))
    whole = study(tmp_path / "a.journal", 5)
    assert COMPILED.clear() == 0  # past the share of memory maps (here 0): each trial's programs were released
    assert [t["params"] for t in whole] == [t["params"] for t in study(tmp_path / "b.journal", 5)]
    assert whole[0]["params"] == {"lr": 1e-2, "epochs": 10, "rank": 8}
    study(tmp_path / "c.journal", 2)
    stale = optuna.load_study(study_name="m", storage=JournalStorage(JournalFileBackend(str(tmp_path / "c.journal"))))
    stale.ask()  # a trial the killed process had started: RUNNING forever in the journal
    resumed = study(tmp_path / "c.journal", 5)
    assert [t["params"] for t in resumed] == [t["params"] for t in whole]
    assert [t["params"] for t in study(tmp_path / "d.journal", 5, seed=1)][1:] != [t["params"] for t in whole][1:]


def test_a_search_resumed_with_another_space_is_refused_not_mixed_into_the_old_study(tmp_path):
    import json

    from prunelora_keras.experiment.tune_args import describe, request
    from prunelora_keras.errors import UserError

    out = tmp_path / "s"
    first = request([*TINY, "--method", "ga", "--space", "lr", "--out", str(out)])
    out.mkdir()
    (out / "tune.json").write_text(json.dumps({"settings": describe(first)}))
    tune.check_folder(first)  # the same request resumes
    tune.check_folder(request([*TINY, "--method", "ga,salun", "--space", "lr", "--out", str(out)]))  # a method added
    with pytest.raises(UserError, match="holds a search of ga over another space \\(lr; now lr, epochs\\)"):
        tune.check_folder(request([*TINY, "--method", "ga", "--space", "lr,epochs", "--out", str(out)]))
    # a request for another method rewrites tune.json; ga's space stays on record and is still enforced
    from prunelora_keras.experiment.tune_report import recorded_settings

    other = request([*TINY, "--method", "salun", "--space", "lr", "--out", str(out)])
    (out / "tune.json").write_text(json.dumps({"settings": recorded_settings(other)}))
    assert set(json.loads((out / "tune.json").read_text())["settings"]["spaces"]) == {"ga", "salun"}
    with pytest.raises(UserError, match="holds a search of ga over another space"):
        tune.check_folder(request([*TINY, "--method", "ga", "--space", "lr,epochs", "--out", str(out)]))


def test_tune_takes_a_users_registered_method_through_plugin(tmp_path):
    from test_run import PLUGIN

    (tmp_path / "my_methods.py").write_text(PLUGIN)
    code = ("from prunelora_keras.experiment.tune_args import request; "
            f"r = request(['--model', 'vit', '--method', 'head_only', '--plugin', {str(tmp_path / 'my_methods.py')!r}]); "
            "print(r.methods, sorted(r.spaces['head_only']))")
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "['head_only'] ['epochs']", proc.stderr[-1500:]
