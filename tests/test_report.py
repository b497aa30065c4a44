"""The report: the paper-style table, the CSV's columns, the degenerate-attack warning, the files."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from prunelora_keras.report import ROW_KEYS, paper_table, results_csv, write_report


def _row(paradigm, epochs, ua, **extra):
    return {"paradigm": paradigm, "epochs": epochs, "UA": ua, "MIA_loss_logreg": 90.0, "MIA_confidence_svc": 80.0,
            "RA": 99.0, "TA": 95.0, "rte_s": 1.5, "compile_s": 3.0, "peak_mem_bytes": 2e9, "mem_kind": "host_rss",
            "trainable_params": 1234, "sparsity": 0.0, **extra}


def _results(original_extra=None):
    rows = [_row("retrain", 10, 100.0), _row("lora", 5, 40.0), _row("lora", 10, 60.0),
            _row("pruned", 5, 0.0, status="non-finite loss at epoch 2, step 3")]
    rows[-1]["status"] = "non-finite loss at epoch 2, step 3"
    original = {"UA": 1.0, "MIA_loss_logreg": 5.0, "MIA_confidence_svc": 3.0, "RA": 99.0, "TA": 95.0,
                "attack_acc_loss_logreg": 80.0, "attack_acc_confidence_svc": 70.0, **(original_extra or {})}
    return {"config": {"model": {"name": "vit"}}, "rows": rows, "original": original}


def test_paper_table_columns_per_epoch_and_retrain_repeated():
    table = paper_table(_results())
    lines = table.splitlines()
    assert lines[0].startswith("| paradigm | UA 5ep | UA 10ep | MIA (loss, LR) 5ep")
    retrain = next(line for line in lines if line.startswith("| Retrain"))
    assert retrain.split(" | ")[1:3] == ["100.00", "100.00"]  # one model, shown in every epoch column
    lora = next(line for line in lines if line.startswith("| LoRA"))
    assert lora.split(" | ")[1:3] == ["40.00", "60.00"]
    assert "2.00 (RSS)" in lora and "1,234" in lora
    assert "| Pruned | failed: non-finite loss" in table
    assert "Warning" not in table


def test_degenerate_attack_on_the_original_model_is_flagged():
    table = paper_table(_results({"attack_degenerate_loss_logreg": True}))
    warnings = [line for line in table.splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1 and "loss/LR" in warnings[0]


def test_csv_has_exactly_the_row_keys():
    rows = list(csv.DictReader(io.StringIO(results_csv(_results()["rows"]))))
    assert tuple(rows[0]) == ROW_KEYS and len(rows) == 4
    assert rows[1]["paradigm"] == "lora" and float(rows[1]["UA"]) == 40.0


def test_write_report_writes_every_file(tmp_path):
    rng = np.random.default_rng(0)
    losses = {"original": {"test": rng.exponential(1, 50), "forget": rng.exponential(0.1, 20)},
              "lora": {"test": rng.exponential(1, 50), "forget": rng.exponential(2, 20)}}
    results = _results()
    write_report(results, tmp_path, losses)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    for name in ("results.csv", "results.md", "loss_histograms.png", "metrics.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_seed_folding_keeps_continual_requests_apart_and_failures_out():
    from prunelora_keras.seeds import aggregate, parse_seeds

    def run(seed, ra, status="ok"):
        return {"seed": seed, "config": {"seed": seed}, "original": {"RA": 90.0 + seed}, "wall_s": 10.0, "rows": [
            {"paradigm": "ft", "epochs": 1, "request": 1, "forgotten": [3], "RA": ra, "status": "ok"},
            {"paradigm": "ft", "epochs": 1, "request": 2, "forgotten": [3, 5], "RA": ra + 10, "status": status}]}

    folded = aggregate([run(0, 50.0), run(1, 60.0), run(2, 70.0, status="non-finite loss")])
    first, second = folded["rows"]
    assert (first["request"], first["RA"], first["n_seeds"]) == (1, 60.0, 3)
    assert first["RA_std"] == pytest.approx(np.std([50.0, 60.0, 70.0]))
    assert (second["RA"], second["n_seeds"], second["status"]) == (65.0, 2, "ok in 2 of 3 seeds")
    assert folded["seeds"] == [0, 1, 2] and folded["original"]["RA"] == 91.0 and folded["wall_s"] == 30.0
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "-1", "a"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_printed_tables_fit_a_100_column_terminal():
    from prunelora_keras.pipeline import summary
    from prunelora_keras.report import fit_width

    results = _results({"attack_degenerate_loss_logreg": True})
    results["rows"][1]["attack_degenerate_confidence_svc"] = True
    results["stages"] = {"original": {"accuracies": {"train": 99.0, "test": 50.0}}}
    wide = paper_table(results)
    assert max(len(line) for line in wide.splitlines()) > 100  # results.md keeps the wide table
    text = summary(results)
    assert max(len(line) for line in text.splitlines()) <= 100
    # nothing is lost: every cell of the wide table is in the split one, row by row
    for line in wide.splitlines():
        if line.startswith("| ") and not line.startswith("| paradigm"):
            name, *cells = [c.strip() for c in line.strip("|").split("|")]
            split_cells = [c.strip() for x in text.splitlines() if x.startswith(f"| {name} |")
                           for c in x.strip("|").split("|")[1:]]
            assert split_cells == cells, name
    assert fit_width("| a | b |\n|---|---|\n| x | y |") == "| a | b |\n|---|---|\n| x | y |"  # narrow: unchanged


def test_plots_say_what_they_show(tmp_path, monkeypatch):
    """metrics.png and loss_histograms.png: titles naming model, preset, forgetting, seed (and the
    epoch the losses are from), every percentage metric of the table plotted, readable fonts."""
    from prunelora_keras import report

    figures = {}
    original = report.save_figure

    def capture(self, path):
        texts = [t.get_text() for t in self.texts] + ([self._suptitle.get_text()] if self._suptitle else [])
        texts += [ax.get_title() for ax in self.axes]
        legend = [t.get_text() for ax in self.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        sizes = [t.get_fontsize() for ax in self.axes for t in ax.get_xticklabels() + [ax.title]]
        figures[Path(path).name] = (" ".join(texts), legend, sizes)
        return original(self, path)

    monkeypatch.setattr(report, "save_figure", capture)
    results = _results()
    results["config"].update(preset="quick", seed=4)
    results["data"] = {"forgetting": "class 3 'cat'"}
    for r in results["rows"]:
        r["avg_gap"] = 1.0
    losses = {"retrain": {"test": np.ones(5), "forget": np.ones(5) * 3}, "lora": {"test": np.ones(5), "forget": np.ones(5)}}
    write_report(results, tmp_path, losses)
    for name in ("metrics.png", "loss_histograms.png"):
        text, legend, sizes = figures[name]
        for fact in ("vit", "preset quick", "class 3 'cat'", "seed 4"):
            assert fact in text, (name, fact)
        assert min(sizes) >= 9, name
    assert "after 10 unlearning epochs" in figures["loss_histograms.png"][0]
    assert figures["metrics.png"][1] == ["UA", "MIA (loss, LR)", "MIA (conf, SVC)", "RA", "TA"]
    assert "Avg. Gap" in figures["metrics.png"][0]
