"""Every class: --forget-each parsing and validation, folding over classes, the per-class tables and
plot, the pruning diagnostics and unlearn.prune_classifier, and one end-to-end sweep."""

import json

import numpy as np
import pytest

from prunelora_keras.experiment.config import build_config
from prunelora_keras.errors import UserError
from prunelora_keras.experiment.paradigms import prune_targets
from prunelora_keras.models.pruning import PruneResult, pruning_diagnostics
from prunelora_keras.experiment.report import DAGGER, evaluation_table, paper_table
from prunelora_keras.experiment.run import main
from prunelora_keras.experiment.sweep import fold_classes, parse_classes, per_class_table

TINY = ["--preset", "quick", "--set", "pretrain.epochs=2", "--set", "model.dim=16", "--set", "model.depth=1",
        "--set", "model.heads=2", "--set", "model.mlp_dim=16", "--set", "data.train_size=300",
        "--set", "eval.relearn_max_steps=20"]


def test_parse_classes():
    assert parse_classes("all", 4) == [0, 1, 2, 3]
    assert parse_classes("3, 0", 10) == [3, 0]
    for text, message in (("", "pass 'all'"), (" , ", "pass 'all'"), ("12", "class 12 is out of range"),
                          ("a,b", "class numbers"), ("-1", "class numbers"), ("1,1", "lists a class twice")):
        with pytest.raises(UserError, match=message):
            parse_classes(text, 10)


def test_the_class_requests_syntax_is_checked_without_the_data():
    from prunelora_keras.experiment.sweep import parse_class_request

    assert parse_class_request("all") is None and parse_class_request(" 7, 0") == [7, 0]
    assert parse_class_request("12") == [12]  # whether class 12 exists needs the data: parse_classes
    for text, message in (("", "pass 'all'"), ("a,b", "class numbers"), ("1,1", "lists a class twice")):
        with pytest.raises(UserError, match=message):
            parse_class_request(text)


@pytest.mark.parametrize("extra, message", [
    (["--forget-each", "12"], "--forget-each: class 12 is out of range: digits has classes 0..9"),
    (["--forget-each", ""], "--forget-each '': pass 'all'"),
    (["--forget-each", "all", "--forget-fraction", "0.1"], "exclude each other"),
    (["--forget-each", "1,2", "--forget-class", "3"], "exclude each other"),
    (["--set", "unlearn.prune_classifier=maybe"], "unlearn.prune_classifier = 'maybe' is not valid"),
    (["--set", "eval.relearn_fraction=1.5"], "eval.relearn_fraction must be in (0, 1)"),
    (["--set", "eval.relearn_max_steps=-1"], "eval.relearn_max_steps must be in"),
])
def test_bad_sweep_input_is_one_line_and_exit_2(capsys, tmp_path, extra, message):
    code = main(["--model", "vit", "--preset", "quick", "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()  # nothing written


def test_prune_classifier_option_on_both_models():
    vit = build_config("vit", "quick")
    assert "head" in prune_targets(vit.model, vit.unlearn)  # the reference prunes the ViT's head
    off = build_config("vit", "quick", sets=["unlearn.prune_classifier=false"])  # a TOML bool reads as the choice
    assert off.unlearn.prune_classifier == "false" and "head" not in prune_targets(off.model, off.unlearn)
    res = build_config("resnet50", "quick")
    assert "head" not in prune_targets(res.model, res.unlearn)  # the reference prunes only the ResNet's convs
    on = build_config("resnet50", "quick", sets=["unlearn.prune_classifier=true"])
    assert prune_targets(on.model, on.unlearn)[-1] == "head"


def test_pruning_diagnostics():
    result = PruneResult(unit_masks={"head": np.array([1, 1, 0, 0, 1, 0], np.float32),
                                     "block3_attn_out": np.r_[np.ones(6), np.zeros(2)].astype(np.float32)})
    d = pruning_diagnostics(result, "head", [5])
    assert d == {"pruned_units": {"head": 3, "block3_attn_out": 2}, "classifier_rows_pruned": [2, 3, 5],
                 "forget_row_pruned": True}
    assert pruning_diagnostics(result, "head", [0])["forget_row_pruned"] is False
    assert pruning_diagnostics(result, "head", ())["forget_row_pruned"] is None  # random-sample forgetting
    no_head = pruning_diagnostics(PruneResult(unit_masks={"stem_conv": np.zeros(4)}), "head", [3])
    assert no_head["classifier_rows_pruned"] == [] and no_head["forget_row_pruned"] is False


def _run(c, ua, probe, hit, degenerate=False):
    rows = [{"paradigm": "retrain", "epochs": 5, "UA": 100.0, "RA": 99.0, "TA": 50.0, "MIA_loss_logreg": 90.0,
             "MIA_confidence_svc": 95.0, "probe_forget_acc": 40.0, "status": "ok"},
            {"paradigm": "pruned_lora", "epochs": 5, "UA": ua, "RA": 98.0, "TA": 49.0, "MIA_loss_logreg": 80.0,
             "MIA_confidence_svc": 70.0, "probe_forget_acc": probe, "forget_row_pruned": hit,
             "classifier_rows_pruned": [c] if hit else [9], "attack_degenerate_confidence_svc": degenerate,
             "status": "ok"}]
    return {"config": {"model": {"name": "vit"}, "data": {"forget_class": c}, "seed": 0}, "seed": 0,
            "data": {"forget_class": c, "class_name": f"c{c}"}, "original": {}, "rows": rows, "wall_s": 1.0}


def test_fold_over_classes_and_the_per_class_tables():
    folded = fold_classes([_run(0, 100.0, 90.0, True), _run(1, 20.0, 100.0, False, degenerate=True)])
    assert folded["classes"] == [0, 1] and [c["class"] for c in folded["per_class"]] == [0, 1]
    plora = next(r for r in folded["rows"] if r["paradigm"] == "pruned_lora")
    assert plora["UA"] == 60.0 and plora["UA_std"] == 40.0 and plora["probe_forget_acc"] == 95.0
    assert plora["forget_row_pruned"] == 0.5 and plora["attack_degenerate_confidence_svc"] is True
    table = per_class_table(folded)
    assert "| Pruned LoRA | 100.0 | 20.0 | 60.0 |" in table  # UA per class, then the mean
    assert "| Pruned LoRA | yes | no | 0.50 |" in table
    assert f"70.00 ± 0.00{DAGGER}" in paper_table(folded) and "degenerate attack" in paper_table(folded)


def test_evaluation_table_shows_the_new_metrics():
    run = _run(3, 100.0, 95.0, True)
    run["rows"][1].update(tow=0.5, cka_forget=0.25, relearn_steps=200, relearn_capped=True)
    table = evaluation_table(run)
    line = next(x for x in table.splitlines() if x.startswith("| Pruned LoRA"))
    assert "0.500" in line and "0.250" in line and ">200" in line and "3 (forget row)" in line


@pytest.mark.slow
def test_forget_each_runs_every_class_from_one_original(capsys, tmp_path):
    out = tmp_path / "each"
    code = main(["--model", "vit", *TINY, "--paradigms", "retrain,pruned_lora", "--epochs", "1",
                 "--forget-each", "2,5", "--out", str(out)])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert len(list((out / "checkpoints").glob("original-*.keras"))) == 1  # one original for every class
    assert not list((out / "class2" / "checkpoints").glob("original-*"))
    per = {c: json.loads((out / f"class{c}" / "results.json").read_text()) for c in (2, 5)}
    assert [per[c]["data"]["forget_class"] for c in (2, 5)] == [2, 5]
    folded = json.loads((out / "results.json").read_text())
    assert folded["classes"] == [2, 5]
    row = next(r for r in folded["rows"] if r["paradigm"] == "pruned_lora")
    values = [next(r for r in per[c]["rows"] if r["paradigm"] == "pruned_lora")["UA"] for c in (2, 5)]
    assert row["UA"] == pytest.approx(np.mean(values)) and row["UA_std"] == pytest.approx(np.std(values))
    for c in (2, 5):
        r = next(r for r in per[c]["rows"] if r["paradigm"] == "pruned_lora")
        assert r["forget_row_pruned"] == (c in r["classifier_rows_pruned"]) and len(r["classifier_rows_pruned"]) == 5
        for key in ("probe_forget_acc", "probe_forget_acc_test", "cka_forget", "cka_retain", "relearn_steps", "tow"):
            assert key in r, key
    assert (out / "per_class.png").stat().st_size > 0 and "probe D_f per forget class" in printed
    assert "per forget class" in (out / "results.md").read_text()
    # the same command again reuses every class's finished results
    assert main(["--model", "vit", *TINY, "--paradigms", "retrain,pruned_lora", "--epochs", "1",
                 "--forget-each", "2,5", "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("already holds finished results") == 2
