import json

import keras
import numpy as np
import pytest

from prunelora_keras.experiment.config import build_config
from prunelora_keras.models.lora import count_params, lora_layer_names
from prunelora_keras.models import build_model
from prunelora_keras.experiment.paradigms import build_recipe
from prunelora_keras.experiment.context import evaluate_model
from prunelora_keras.experiment.pipeline import load_data
from prunelora_keras.experiment.report import MANY_MODEL_KEYS, ROW_KEYS, ULIRA_KEYS
from prunelora_keras.experiment.run import main


def tiny_cfg(model="vit", *sets):
    base = ["model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=16", "model.width=0.0625"]
    return build_config(model, "quick", sets=base + list(sets))


def test_recipes_train_what_they_declare():
    cfg = tiny_cfg("resnet50")
    fresh = lambda: build_model(cfg.model, 10, (8, 8, 3))  # noqa: E731
    ft = build_recipe("finetune", fresh(), cfg)
    assert ft.train_vars == list(ft.model.trainable_variables) and not ft.uses_lora and not ft.masks
    pr = build_recipe("pruned", fresh(), cfg)
    assert len(pr.pruned_layers) == 53 and pr.masks == {}  # reference mode: nothing enforced
    lo = build_recipe("lora", fresh(), cfg)
    assert len(lora_layer_names(lo.model)) == 48
    assert {v.path.split("/")[-1] for v in lo.train_vars} == {"lora_a", "lora_b", "kernel", "bias"}
    assert all(v.path.startswith("head/") for v in lo.train_vars if not v.path.endswith(("lora_a", "lora_b")))
    persistent = build_config("resnet50", "quick", sets=["model.width=0.0625", "pruned_lora.mode=persistent"])
    pl = build_recipe("pruned_lora", build_model(persistent.model, 10, (8, 8, 3)), persistent)
    assert len(pl.masks) == 53 and np.all(keras.ops.convert_to_numpy(
        pl.model.get_layer("stage1_block1_conv1").unit_mask).sum() == 2)  # 4 channels, round(0.5 * 4) = 2 pruned


def test_vit_lora_targets_reference_and_intended():
    ref = tiny_cfg("vit")
    r = build_recipe("lora", build_model(ref.model, 10, (8, 8, 3)), ref)
    assert lora_layer_names(r.model) == ["head"] and count_params(r.train_vars) == 16 * 16 + 16 * 10
    intended = tiny_cfg("vit", "unlearn.vit_lora_targets=intended")
    i = build_recipe("lora", build_model(intended.model, 10, (8, 8, 3)), intended)
    assert lora_layer_names(i.model) == ["block1_attn_out", "head"]


def test_merged_and_unmerged_lora_give_the_same_metrics():
    cfg = tiny_cfg("vit", "data.train_size=300")
    ds, split = load_data(cfg)
    model = build_model(cfg.model, 10, ds.image_shape)
    for v in model.trainable_variables:
        v.assign(np.random.default_rng(0).normal(scale=0.3, size=v.shape).astype("float32"))
    recipe = build_recipe("pruned_lora", model, cfg)
    for layer in recipe.model.layers:
        if hasattr(layer, "lora_b"):
            layer.lora_b.assign(np.random.default_rng(1).normal(scale=0.3, size=layer.lora_b.shape).astype("float32"))
    merged = evaluate_model(recipe.eval_model(), split, ds, cfg)
    unmerged = evaluate_model(recipe.model, split, ds, cfg)
    for key in ("UA", "RA", "TA", "MIA_loss_logreg", "MIA_confidence_svc", "MIA_entropy_svc", "MIA_m_entropy_svc",
                "probe_forget_acc", "probe_forget_acc_test"):
        assert merged.metrics[key] == pytest.approx(unmerged.metrics[key], abs=1e-9), key
    np.testing.assert_allclose(merged.features["forget"], unmerged.features["forget"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_whole_pipeline_invariants(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", "vit", "--preset", "quick", "--out", str(out), "--epochs", "2,4",
            "--set", "model.dim=32", "--set", "model.depth=1", "--set", "model.heads=2", "--set", "model.mlp_dim=32",
            "--set", "pretrain.epochs=12", "--set", "unlearn.batch_size=16", *[a for m in ("finetune", "pruned", "lora", "pruned_lora") for a in ("--set", f"{m}.lr=3e-3")],
            "--set", "pruned.mode=persistent", "--set", "pruned_lora.mode=persistent", "--set", "unlearn.vit_lora_targets=intended"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    for key in ("config", "seed", "device", "versions", "original", "rows"):
        assert key in results
    rows = {(r["paradigm"], r["epochs"]): r for r in results["rows"]}
    assert set(rows) == {(p, e) for p in ("retrain", "finetune", "pruned", "lora", "pruned_lora") for e in (2, 4)}
    always = set(ROW_KEYS) - {"classifier_rows_pruned", "forget_row_pruned"} - set(MANY_MODEL_KEYS) - set(ULIRA_KEYS)
    relearn = {k for k in always if k.startswith("relearn_")}  # measured at the largest epoch count only
    rmia = {k for k in always if "rmia" in k}  # Retrain is RMIA's reference: every row but its own
    assert relearn and all(always - relearn - rmia <= set(r) for r in results["rows"]), always - set(results["rows"][0])
    assert all(rmia <= set(r) if r["paradigm"] != "retrain" else not rmia & set(r) for r in results["rows"])
    assert all(relearn <= set(r) for r in results["rows"] if r["epochs"] == 4)
    assert not any(relearn & set(r) for r in results["rows"] if r["epochs"] == 2 and r["paradigm"] != "retrain")
    for (p, e), r in rows.items():  # pruning diagnostics on the pruned rows only; the ViT's head is a target
        assert ("forget_row_pruned" in r) == (p in ("pruned", "pruned_lora")), p
        if "forget_row_pruned" in r:
            assert len(r["classifier_rows_pruned"]) == 5 and r["pruned_units"] == {"block0_attn_out": 16, "head": 5}
            assert r["forget_row_pruned"] == (3 in r["classifier_rows_pruned"])
    assert rows[("retrain", 2)]["UA"] == 100.0 and rows[("retrain", 2)] == {**rows[("retrain", 4)], "epochs": 2}
    original_ua = results["original"]["UA"]
    for (p, e), r in rows.items():
        if e == 4:
            assert r["UA"] > original_ua, (p, r["UA"], original_ua)
        assert r["rte_s"] > 0 and r["peak_mem_bytes"] > 0 and r["mem_kind"] in ("device", "host_rss")
    # LoRA trains only its adapters (here: out-projection and head, the ViT's rank 16)
    dim, rank = 32, 16
    assert rows[("lora", 4)]["trainable_params"] == (dim * rank + rank * dim) + (dim * rank + rank * 10)
    assert rows[("finetune", 4)]["trainable_params"] == rows[("retrain", 4)]["trainable_params"]
    # persistent pruning of 50% of the out-projection and head units is still there after training
    for p in ("pruned", "pruned_lora"):
        expected = 100 * (16 * 32 + 5 * 32) / (32 * 32 + 10 * 32)  # zero columns / all weights of both layers
        assert rows[(p, 4)]["sparsity"] == pytest.approx(expected, abs=0.01)
    assert rows[("finetune", 4)]["sparsity"] < 1
    for name in ("results.csv", "results.md", "loss_histograms.png", "metrics.png"):
        assert (out / name).stat().st_size > 0
    assert "| Pruned LoRA |" in printed and "| Retrain |" in printed
    csv_head = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert csv_head[:13] == list(ROW_KEYS[:13])


def test_two_seeds_share_no_adapter_initialisation():
    """Adapter seeds come from (seed, layer name), not seed + layer index (which made seed s's adapter
    on layer i+1 equal seed s+1's on layer i: same shapes here, so the old rule fails this test)."""
    import keras

    from prunelora_keras.models.lora import add_lora

    inputs = keras.Input((8,))
    x = inputs
    for k in range(4):
        x = keras.layers.Dense(8, name=f"fc{k}")(x)
    base = keras.Model(inputs, x)
    inits = {}
    for seed in (0, 1):
        adapted, _ = add_lora(base, [r"fc\d"], rank=2, alpha=4, seed=seed)
        inits[seed] = [adapted.get_layer(f"fc{k}").lora_a.numpy() for k in range(4)]
    a_matrices = inits[0] + inits[1]
    for i in range(len(a_matrices)):
        for j in range(i + 1, len(a_matrices)):
            assert not np.allclose(a_matrices[i], a_matrices[j]), (i, j)
    again, _ = add_lora(base, [r"fc\d"], rank=2, alpha=4, seed=0)
    np.testing.assert_array_equal(again.get_layer("fc2").lora_a.numpy(), inits[0][2])  # seeded: reproducible
