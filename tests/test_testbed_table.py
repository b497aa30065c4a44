"""benchmarks/testbed_table.py: AMUN's gap and the spread over forget classes, from written results files."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("testbed_table", REPO / "benchmarks" / "testbed_table.py")
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def _write(path, forget_class, rows):
    path.write_text(json.dumps({"config": {"data": {"forget_class": forget_class}}, "original": {"test_acc": 90.5},
                                "rows": rows}))
    return str(path)


def _row(name, epochs, ua, ra, ta, **extra):
    return {"paradigm": name, "epochs": epochs, "UA": ua, "RA": ra, "TA": ta, "MIA_confidence_svc": 10.0,
            "MIA_loss_logreg": 5.0, "status": "ok", **extra}


def test_amuns_gap_is_the_mean_difference_over_the_three_accuracies_and_rmia(tmp_path):
    retrain = _row("retrain", 10, 6.0, 99.0, 90.0)
    amun = _row("amun", 10, 8.0, 98.0, 89.0, MIA_rmia_auc=54.0, trainable_params=1234567, avg_gap=0.1)
    close = _row("salun", 10, 6.0, 99.0, 90.0, MIA_rmia_auc=51.0, avg_gap=9.0)  # AMUN's gap 0.25: above AMUN
    early = _row("finetune", 5, 6.0, 99.0, 90.0, MIA_rmia_auc=50.0)
    assert table.amun_gap(amun, retrain) == pytest.approx((2 + 1 + 1 + 4) / 4)
    text = table.random_forgetting([_write(tmp_path / "r.json", -1, [retrain, amun, close, early,
                                                                     _row("finetune", 10, 6.0, 99.0, 90.0, MIA_rmia_auc=50.0)])])
    lines = text.splitlines()
    line = next(x for x in lines if x.startswith("| AMUN"))
    assert "| 2.00 |" in line and "95.45 / 99.57 / 93.45 / 50.18 / 0.62" in line  # ours, then AMUN's Table 1
    assert "| 1,234,567 |" in line
    order = [x.split(" | ")[0][2:] for x in lines if x.startswith("| ") and not x.startswith("| method")]
    assert order[:3] == ["Retrain", "Finetune", "Finetune"] and order.index("SalUn") < order.index("AMUN")  # AMUN's gap
    five = next(x for x in lines if x.startswith("| Finetune | 5 |"))
    assert "95.16" not in five and "95.16" in next(x for x in lines if x.startswith("| Finetune | 10 |"))


def test_spread_is_mean_and_sample_sd_over_the_forget_classes(tmp_path):
    paths = [_write(tmp_path / f"c{c}.json", c, [_row("retrain", 10, 100.0, 98.0, 90.0),
                                                  _row("lora", 10, ua, 95.0, 88.0, avg_gap=gap)])
             for c, ua, gap in ((3, 90.0, 3.0), (5, 94.0, 5.0), (7, 98.0, 4.0))]
    text = table.spread(paths)
    lora = next(x for x in text.splitlines() if x.startswith("| LoRA"))
    assert "| 3 | 94.00 ± 4.00 |" in lora and "4.00 ± 1.00" in lora
    assert "Forget classes: 3, 5, 7" in text


def test_class_wise_rows_sit_beside_the_papers_numbers_at_the_same_epochs_and_flag_degenerate_attacks(tmp_path):
    rows = [_row("retrain", 10, 100.0, 98.0, 90.0), _row("finetune", 5, 100.0, 97.0, 89.0),
            _row("finetune", 10, 100.0, 97.5, 89.5, attack_degenerate_confidence_svc=True)]
    text = table.class_wise([_write(tmp_path / "c.json", 3, rows)])
    five = next(x for x in text.splitlines() if x.startswith("| Finetune | 5 |"))
    ten = next(x for x in text.splitlines() if x.startswith("| Finetune | 10 |"))
    assert five.endswith("| 100 / 100 / 92.52 / 88.29 |") and ten.endswith("| 100 / 100 / 96.27 / 91.44 |")
    assert "| 10.00† |" in ten and "| 10.00 |" in five and "† degenerate attack" in text
    assert "Setting: airbench94" in text


def test_columns_keeps_the_named_columns_in_order_and_refuses_unknown_ones(tmp_path):
    path = _write(tmp_path / "c.json", 3, [_row("retrain", 10, 100.0, 98.0, 90.0), _row("lora", 10, 100.0, 97.0, 89.5)])
    text = table.class_wise([path], keep=["TA", "UA"])
    assert text.splitlines()[0] == "| method | epochs | UA | TA |"
    assert next(x for x in text.splitlines() if x.startswith("| LoRA")) == "| LoRA | 10 | 100.00 | 89.50 |"
    with pytest.raises(SystemExit, match="no column"):
        table.class_wise([path], keep=["UA", "accuracy"])


def test_class_wise_says_which_rows_have_no_published_number(tmp_path):
    plain = table.class_wise([_write(tmp_path / "p.json", 3, [_row("retrain", 10, 100.0, 98.0, 90.0)])])
    assert "No published class-wise number" not in plain
    rows = [_row("retrain", 10, 100.0, 98.0, 90.0), _row("amun", 10, 5.0, 99.0, 90.0),
            _row("boundary_shrink", 10, 80.0, 95.0, 88.0)]
    text = table.class_wise([_write(tmp_path / "c.json", 3, rows)])
    note = next(x for x in text.splitlines() if x.startswith("No published class-wise number"))
    assert "Boundary Shrink, AMUN:" in note and "All-CNN" in note and "random forgetting only" in note
    assert "Boundary Expanding" not in note
    assert next(x for x in text.splitlines() if x.startswith("| AMUN")).endswith("|  |")  # its paper cell stays empty


def test_rows_from_another_original_and_retrain_keep_their_own_retrain_and_are_marked(tmp_path):
    first = _write(tmp_path / "a.json", -1, [_row("retrain", 10, 10.0, 99.0, 90.0),
                                             _row("amun", 10, 8.0, 99.0, 90.0, MIA_rmia_auc=50.0)])
    again = json.loads(Path(first).read_text())
    again["original"]["test_acc"] = 90.2  # trained again on a fresh machine: another original, another Retrain
    again["rows"] = [_row("retrain", 10, 12.0, 98.0, 89.0), _row("lora", 10, 12.0, 98.0, 89.0, MIA_rmia_auc=50.0)]
    second = tmp_path / "b.json"
    second.write_text(json.dumps(again))
    text = table.random_forgetting([first, str(second)], keep=["forget acc", "gap (AMUN's formula)"])
    lines = text.splitlines()
    assert "| Retrain | 10 | 90.00 | 0.00 |" in lines and "| Retrain‡ | 10 | 88.00 | 0.00 |" in lines
    assert "| LoRA‡ | 10 | 88.00 | 0.00 |" in lines  # scored against its own Retrain: against the first, 1.25
    assert "| AMUN | 10 | 92.00 | 0.50 |" in lines
    assert any(x.startswith("‡ Rows from another original (test 90.20%)") for x in lines)
    same = table.random_forgetting([first, first])  # one original and Retrain: no mark, no note
    assert "‡" not in same
