"""U-LiRA from shadow pools: the library (``plk.ulira``) on a user's own model, and the command's
``--eval-ulira S`` (scores on the rows, files, reuse, a killed shadow pool resumed, validation)."""

import json
import shutil

import numpy as np
import pytest
from test_many_models import _cli, assert_one_error_line

COLUMNS = ("ulira_acc", "ulira_acc_lo", "ulira_acc_hi", "ulira_tpr_at_0.01", "ulira_acc_retain")


def _scores(out) -> dict:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {r["paradigm"]: tuple(r.get(c) for c in COLUMNS + ("ulira_acc_original", "ulira_acc_floor")) for r in rows}


@pytest.mark.parametrize("args,message", [
    (["--eval-ulira", "7"], "must be 0 (off) or an even number of shadow models >= 6"),
    (["--eval-ulira", "4"], "must be 0 (off) or an even number of shadow models >= 6"),
    (["--eval-ulira", "6", "--forget-class", "3,5"], "does not combine with continual requests"),
    (["--eval-ulira", "100000", "--set", "model.dim=64", "--set", "model.depth=2", "--set", "model.mlp_dim=128"],
     "the largest S that fits is"),
])
def test_bad_eval_ulira_ends_with_one_line_and_exit_2(tmp_path, args, message):
    assert_one_error_line(_cli(args, tmp_path / "r"), message)
    assert not (tmp_path / "r" / "ulira").exists()


@pytest.mark.slow
def test_eval_ulira_scores_every_method_saves_reuses_and_resumes_its_pools(tmp_path):
    straight = tmp_path / "straight"
    flags = ["--eval-ulira", "6", "--forget-fraction", "0.1"]
    proc = _cli(flags, straight)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((straight / "results.json").read_text())
    final = {r["paradigm"]: r for r in results["rows"]}
    for name in ("retrain", "finetune", "lora"):
        assert all(0 <= final[name][c] <= 1 for c in ("ulira_acc", "ulira_tpr_at_0.01")), final[name]
        assert final[name]["ulira_acc_lo"] <= final[name]["ulira_acc"] <= final[name]["ulira_acc_hi"]
        assert final[name]["ulira_shadows"] == 6
    assert final["finetune"]["ulira_acc_floor"] == final["retrain"]["ulira_acc"]  # every method beside the floor
    assert "ulira_acc_retain" in final["lora"] and 0 <= final["finetune"]["ulira_acc_original"] <= 1
    assert "ulira_acc" in (straight / "results.csv").read_text().splitlines()[0]
    assert "U-LiRA (largest epoch count)" in (straight / "results.md").read_text()
    assert (straight / "ulira.png").stat().st_size > 10_000
    pools = sorted(p.name.split("-")[0] for p in (straight / "ulira").glob("*.npz"))
    assert pools == ["finetune", "floor", "lora", "original", "retrain"]
    forget = results["data"]["forget"]
    with np.load(straight / "ulira.npz") as z:
        halves = z["halves"]
        assert halves.shape == (6, results["data"]["retain"] + forget) and set(z["halves"].sum(1)) == {halves[0].sum()}
        assert len(z["lora/forget_acc"]) <= forget and set(z.files) >= {"original/retain_acc", "retrain/forget_acc"}
    with np.load(next((straight / "ulira").glob("lora-*.npz"))) as z:  # every member's weights and its logits
        assert z["logits"].shape[:2] == (6, forget + min(500, results["data"]["retain"]))

    proc = _cli(flags, straight)  # finished: no shadow trains again
    assert proc.returncode == 0 and "x6 epoch" not in proc.stderr and "already holds finished results" in proc.stderr

    crashed = tmp_path / "crashed"  # the run folder with its results and the Retrain shadows lost: the other
    shutil.copytree(straight, crashed)  # pools are reused, the Retrain shadows train again and are killed
    for p in [*(crashed / "ulira").glob("retrain-*.npz"), crashed / "results.json"]:
        p.unlink()
    proc = _cli(flags, crashed, {"PRUNELORA_KILL_AFTER": "ulira-retrain:1"})
    assert proc.returncode == -9 and len(list((crashed / "ulira").glob("retrain-*.state.npz"))) == 1
    proc = _cli(flags, crashed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ulira-retrain: resuming after epoch 1" in proc.stderr and "ulira original pool: reusing" in proc.stderr
    assert "ulira lora pool: reusing" in proc.stderr and "ulira floor x6 epoch" not in proc.stderr
    assert _scores(crashed) == _scores(straight)
    assert not list((crashed / "ulira").glob("*.state.npz"))


def test_the_library_attacks_a_users_own_model_and_its_members_are_the_pools():
    import keras

    import prunelora_keras as plk
    from prunelora_keras.api.ulira import fit_pool, member_model

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (240, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0).astype("int32")

    def build(seed):
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])

    recipe = plk.TrainConfig(epochs=3, optimizer="adam", lr=1e-2)
    seen = {}

    def runner(name, make_pool, epochs, inputs):
        logits, values = fit_pool(name, make_pool, epochs, inputs)
        seen[name] = (logits, values, inputs)
        return logits, values

    candidates = y == 3
    report = plk.ulira(build, x, y, candidates, methods=["retrain", "finetune", "neggrad_plus"], shadows=6,
                       pretrain=recipe, epochs=2, batch_size=32, retain_sample=60, bootstrap=50, run_pool=runner,
                       verbose=False, lr=1e-2)
    assert set(report.forget) == {"original", "retrain", "finetune", "neggrad_plus"}
    assert set(report.retain) == {"original", "finetune", "neggrad_plus"}
    assert sorted(seen) == ["finetune", "floor", "neggrad_plus", "original", "retrain"]
    rows = report.rows()
    assert all(0 <= r["ulira_acc"] <= 1 for r in rows.values()) and rows["finetune"]["ulira_examples"] > 0
    n_c = int(candidates.sum()) - int(candidates.sum()) % 2  # an odd candidate is left out of every shadow
    assert report.forget["finetune"].positives == report.forget["finetune"].negatives == 3 * n_c
    assert len(report.retain_sample) == 60 and not candidates[report.retain_sample].any()
    # shadow k's original, rebuilt from the pool's values, gives the pool's logits; it trained on its half only
    logits, values, inputs = seen["original"]
    model = member_model(build, 0, values[2])
    np.testing.assert_allclose(model.predict(inputs, verbose=0), logits[2], rtol=1e-4, atol=1e-4)
    assert (report.halves.sum(axis=1) == report.halves[0].sum()).all()
    # a method whose shadows diverge has no scores; the others still run and are scored
    diverged = plk.ulira(build, x, y, candidates, methods=["finetune", "neggrad_plus"], shadows=6, pretrain=recipe,
                         epochs=1, batch_size=32, bootstrap=0, verbose=False, lr=1e30)
    assert set(diverged.failed) == {"finetune", "neggrad_plus"} and "not finite" in diverged.failed["finetune"], \
        diverged.failed
    assert set(diverged.forget) == {"original", "retrain"}
    with pytest.raises(ValueError, match="even number >= 6"):
        plk.ulira(build, x, y, candidates, methods=["finetune"], shadows=4, pretrain=recipe)
    with pytest.raises(ValueError, match="unknown method 'scrubb'"):
        plk.ulira(build, x, y, candidates, methods=["scrubb"], shadows=6, pretrain=recipe)
    with pytest.raises(ValueError, match="unknown option 'rank' for method 'finetune'"):
        plk.ulira(build, x, y, candidates, methods=["lora", "finetune"], shadows=6, pretrain=recipe, rank=4)
    with pytest.raises(ValueError, match="at least one candidate"):
        plk.ulira(build, x, y, np.ones(len(y), bool), methods=["finetune"], shadows=6, pretrain=recipe)
    def never(name, make_pool, epochs, inputs):
        pytest.fail("a bad option must be refused before any pool trains")

    for bad, message in (({"retain_sample": 0}, "retain_sample must be an integer >= 1, got 0"),
                         ({"retain_sample": 2.5}, "retain_sample must be an integer >= 1"),
                         ({"bootstrap": -1}, "bootstrap must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            plk.ulira(build, x, y, candidates, methods=["finetune"], shadows=6, pretrain=recipe, run_pool=never, **bad)


def test_members_whose_steps_differ_train_one_after_another_each_as_its_single_run():
    """SalUn's optimiser masks its updates with the saliency of its own model: shadows that start from
    different originals cannot share a step, so the pool trains them member by member (said), and
    member k is exactly the single run of its seed."""
    import keras

    import prunelora_keras as plk
    from prunelora_keras.api.library import unlearn_options, user_context
    from prunelora_keras.methods.prepare import prepare_method
    from prunelora_keras.training.memberwise import MemberwisePool
    from prunelora_keras.training.pool_checks import MembersDiffer

    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (96, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0).astype("int32")
    originals = {}
    for s in (3, 4):  # two different "shadow originals"
        keras.utils.set_random_seed(s)
        originals[s] = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu"),
                                         keras.layers.Dense(4)])
    opts, hparams = unlearn_options("salun", lr=0.05)

    def context(seed):
        return user_context(originals[seed], (x[y != 3], y[y != 3]), (x[y == 3], y[y == 3]), 4, opts, hparams,
                            seed, 2)[0]

    with pytest.raises(MembersDiffer, match="optimiser updates differently"):
        plk.method_pool("salun", context, [3, 4], mode="loop", verbose=False)
    pool = plk.method_pool("salun", context, [3, 4], verbose=False)
    assert isinstance(pool, MemberwisePool) and pool.k == 2
    history = pool.fit(2)
    assert [h.epoch for h in history] == [1, 2] and pool.global_step > 0
    logits = pool.logits(x)
    for k, seed in enumerate((3, 4)):
        single = prepare_method("salun", context(seed), verbose=False)
        single.fit(2, opts.batch_size)
        np.testing.assert_allclose(logits[k], single.trainer.model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    state = pool.state()  # stacked over the members, as checkpoints save it; restore gives it back
    pool.restore(state, pool.global_step)
    np.testing.assert_allclose(pool.logits(x), logits, rtol=1e-6, atol=1e-6)
