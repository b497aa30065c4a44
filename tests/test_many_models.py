"""The command's many-model evaluation (``--eval-models K``): pools, scores, files, reuse, resume,
and the flag's validation (one ``error:`` line, exit 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, clean_env

TINY = ["--model", "vit", "--preset", "quick", "--set", "pretrain.epochs=2", "--set", "retrain.epochs=2",
        "--set", "model.dim=16", "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=16",
        "--set", "data.train_size=300", "--paradigms", "retrain,finetune,lora", "--epochs", "1"]
COLUMNS = ("forgetting_quality", "forgetting_quality_ceiling", "klom_forget", "klom_retain", "klom_test")


def _cli(args, out=None, env_extra=None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "prunelora_keras.run", *TINY, *args] + (["--out", str(out)] if out else [])
    return subprocess.run(argv, env=clean_env() | (env_extra or {}), cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def _scores(out) -> dict:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {r["paradigm"]: tuple(r.get(c) for c in COLUMNS) for r in rows}


def assert_one_error_line(proc: subprocess.CompletedProcess, message: str) -> None:
    """The command ended with exit 2 and one ``error:`` line holding ``message``, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--eval-models", "1"], "must be 0 (off) or a number of models per pool from 2"),
    (["--eval-models", "100000", "--set", "model.dim=64", "--set", "model.depth=2", "--set", "model.mlp_dim=128"],
     "the largest K that fits is"),
    (["--eval-models", "3", "--forget-class", "3,5"], "does not combine with continual requests"),
])
def test_bad_eval_models_end_with_one_line_and_exit_2(tmp_path, args, message):
    assert_one_error_line(_cli(args, tmp_path / "r"), message)
    assert not (tmp_path / "r" / "pools").exists()


@pytest.mark.slow
def test_eval_models_adds_the_scores_and_files_reuses_pools_and_a_killed_pool_resumes(tmp_path):
    straight = tmp_path / "straight"
    proc = _cli(["--eval-models", "3"], straight)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((straight / "results.json").read_text())
    final = {r["paradigm"]: r for r in results["rows"]}
    for name in ("retrain", "finetune", "lora"):
        assert all(np.isfinite(final[name][c]) for c in COLUMNS), final[name]
        assert final[name]["eval_models"] == 3
    ceiling = final["retrain"]["forgetting_quality"]
    assert final["finetune"]["forgetting_quality_ceiling"] == ceiling  # every method beside the same ceiling
    assert 0 <= final["finetune"]["forgetting_quality"] <= 1 and 0 < ceiling <= 1
    # RMIA: the single models against the forgotten class's test images; the pools keep no such logits
    assert np.isfinite(final["finetune"]["MIA_rmia_auc"]) and "MIA_rmia_auc" not in final["retrain"]
    assert "pool_rmia_auc" not in final["finetune"]
    header = (straight / "results.csv").read_text().splitlines()[0]
    assert all(c in header for c in COLUMNS)
    assert "Many-model evaluation" in (straight / "results.md").read_text()
    assert (straight / "forgetting_quality.png").stat().st_size > 10_000
    with np.load(straight / "per_example.npz") as z:
        assert set(z.files) >= {"finetune/epsilon_forget", "lora/klom_forget", "retrain/klom_test"}
        assert len(z["finetune/epsilon_forget"]) == results["data"]["forget"]
    pools = sorted(p.name.split("-")[0] for p in (straight / "pools").glob("*.npz"))
    assert pools == ["finetune", "lora", "retrain", "retrain_ceiling"]
    with np.load(next((straight / "pools").glob("lora-*.npz"))) as z:  # stacked weights and the pool's logits
        assert z["logits_forget"].shape[:2] == (3, results["data"]["forget"]) and z["train_0"].shape[0] == 3

    proc = _cli(["--eval-models", "3"], straight)  # finished: nothing trains again
    assert proc.returncode == 0 and "x3 epoch" not in proc.stderr

    crashed = tmp_path / "crashed"
    proc = _cli(["--eval-models", "3"], crashed, {"PRUNELORA_KILL_AFTER": "pool-retrain:1"})
    assert proc.returncode == -9 and len(list((crashed / "pools").glob("retrain-*.state.npz"))) == 1
    proc = _cli(["--eval-models", "3"], crashed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pool-retrain: resuming after epoch 1" in proc.stderr
    assert _scores(crashed) == _scores(straight)
    assert not list((crashed / "pools").glob("*.state.npz"))


@pytest.mark.slow
def test_eval_models_scores_random_sample_forgetting(tmp_path):
    """The challenge's own scenario: a random 10% of the training set, every class."""
    out = tmp_path / "random"
    proc = _cli(["--eval-models", "2", "--forget-fraction", "0.1", "--paradigms", "retrain,finetune"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["forget_class"] == -1
    final = {r["paradigm"]: r for r in results["rows"]}
    assert all(np.isfinite(final["finetune"][c]) for c in COLUMNS)
    assert all(0 <= final[n]["pool_rmia_auc"] <= 100 for n in ("finetune", "retrain"))  # random: D_f against the test set
    assert "pool RMIA AUC" in (out / "results.md").read_text()
    # K = 2: ceil(log(1)) = 0, no bin can score: the resolution limit, stated beside every number
    assert final["finetune"]["forgetting_quality"] == 0.0 and final["retrain"]["forgetting_quality"] == 0.0
    assert "K = 2 models per pool" in (out / "results.md").read_text()


def test_seeds_fold_the_many_model_scores_and_the_table_shows_them():
    from prunelora_keras.experiment.pool_report import pool_table
    from prunelora_keras.experiment.seeds import aggregate

    def run(seed, fq):
        row = {"paradigm": "lora", "epochs": 5, "status": "ok", "forgetting_quality": fq, "eval_models": 8,
               "forgetting_quality_ceiling": 0.2, "forget_score": fq, "epsilon_median": 3.0, "spread_ratio_forget": 0.5,
               "klom_forget": 9.0, "klom_retain": 4.0, "klom_test": 4.0, "pool_UA": 50.0, "pool_RA": 99.0,
               "pool_TA": 95.0}
        return {"seed": seed, "config": {}, "rows": [row], "original": {}}

    folded = aggregate([run(0, 0.01), run(1, 0.03)])
    row = folded["rows"][0]
    assert row["forgetting_quality"] == pytest.approx(0.02) and row["forgetting_quality_std"] == pytest.approx(0.01)
    assert row["eval_models"] == 8
    table = pool_table(folded)
    assert "| LoRA | 0.020 | 0.200 |" in table and "K = 8 models per pool" in table
