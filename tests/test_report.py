"""The report: the paper-style table, the CSV's columns, the degenerate-attack warning, the files."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from prunelora_keras.experiment.report import ROW_KEYS, paper_table, results_csv, write_report


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
    from prunelora_keras.experiment.seeds import aggregate, parse_seeds

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
    from prunelora_keras.experiment.pipeline import summary
    from prunelora_keras.experiment.terminal import fit_width

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
    from prunelora_keras.experiment import report

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


def _wide_results(epochs=(5, 10)):
    """Every metric at each of ``epochs``, with spreads: wider than a terminal."""
    rows = []
    for p, gap in (("retrain", 0.0), ("finetune", 4.25), ("pruned", 2.5), ("lora", 7.0), ("pruned_lora", 1.75)):
        for e in epochs:
            rows.append(_row(p, e, 50.0 + gap, avg_gap=gap, avg_gap_std=0.5, UA_std=1.0, RA_std=0.25, TA_std=0.5,
                             MIA_loss_logreg_std=2.0, MIA_confidence_svc_std=1.5))
    return {"config": {"model": {"name": "vit"}, "preset": "quick", "seed": 4,
                       "unlearn": {"prune_mode": "reference", "prune_amount": 0.5, "relearn_max_steps": 200}},
            "data": {"dataset": "digits", "forgetting": "class 3 'cat'", "forget": 144, "forget_class": 3},
            "rows": rows, "original": {},
            "stages": {"original": {"accuracies": {"train": 99.5, "test": 97.25, "forget": 98.0}},
                       "retrain": {"accuracies": {"train": 90.0, "test": 88.0, "forget": 0.0}}}}


@pytest.mark.parametrize("epochs", [(5, 10), (2, 5, 10)])
def test_printed_table_keeps_each_metrics_epoch_columns_together(epochs):
    from prunelora_keras.experiment.terminal import fit_width

    text = fit_width(paper_table(_wide_results(epochs)))
    heads = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| paradigm")]
    assert len(heads) > 1 and max(len(line) for line in text.splitlines()) <= 100
    for head in heads:  # every metric shown in a part has all its epoch columns in that part
        metrics = {h.rsplit(" ", 1)[0] for h in head if h.endswith("ep")}
        for m in metrics:
            assert all(f"{m} {e}ep" in head for e in epochs), (m, head)


def test_closing_lines_say_what_was_forgotten_and_which_method_came_closest():
    from prunelora_keras.experiment.terminal import closing_lines

    text = closing_lines(_wide_results())
    first, second, note = text.splitlines()
    assert note.startswith("The quick preset is a smoke test (8x8 digits") and "--preset cpu-10k" in note  # issue 39
    other = _wide_results()
    other["config"] = {**other["config"], "preset": "cpu-10k"}
    assert len(closing_lines(other).splitlines()) == 2  # a real preset: no such note
    assert first.startswith("Forgotten: class 3 'cat' of digits (144 training images)")
    # the smallest Avg. Gap among the unlearning methods, computed here independently
    best = min((r for r in _wide_results()["rows"] if r["paradigm"] != "retrain" and r["epochs"] == 10),
               key=lambda r: r["avg_gap"])
    assert best["paradigm"] == "pruned_lora"
    assert "Closest to Retrain by Avg. Gap" in second and "Pruned LoRA, 1.75 ± 0.50 points at 10 epochs" in second
    assert second.index("Pruned 2.50") < second.index("Finetune 4.25") < second.index("LoRA 7.00")
    no_retrain = {**_wide_results(), "rows": [r for r in _wide_results()["rows"] if r["paradigm"] != "retrain"]}
    assert "add retrain to --paradigms" in closing_lines(no_retrain)


def test_summary_ends_with_the_closing_lines():
    from prunelora_keras.experiment.pipeline import summary

    last = " ".join(summary(_wide_results()).split("\n\n")[-1].splitlines())  # wrapped at 100 columns
    assert last.startswith("Forgotten: class 3 'cat' of digits") and "Retrain without it. Closest to Retrain" in last
    assert "then Pruned 2.50, Finetune 4.25, LoRA 7.00. The quick preset is a smoke test" in last
    assert last.endswith("(the README's headline results; docs/results.md).")


def test_results_md_has_a_heading_the_accuracy_table_and_the_closing_lines(tmp_path):
    results = _wide_results()
    write_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == "# vit on digits, preset quick, forgetting class 3 'cat', seed 4"
    assert "Accuracy (%) of the trained models:" in md
    assert any(line.startswith("| original | 99.50 | 97.25 |") for line in md)
    assert md.index("Accuracy (%) of the trained models:") < next(i for i, x in enumerate(md) if x.startswith("| paradigm"))
    assert md[-2].startswith("Closest to Retrain by Avg. Gap") and md[-1].startswith("The quick preset is a smoke test")
    folded = {**results, "seeds": [0, 1], "stages": None}
    write_report(folded, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# vit on digits, preset quick, forgetting class 3 'cat', seeds 0, 1\n")
    assert "Accuracy (%)" not in md  # folded results keep each run's accuracies in its own folder


def test_a_capped_relearn_shows_the_cap_as_a_lower_bound():
    from prunelora_keras.experiment.report import evaluation_table

    results = _wide_results()
    for r in results["rows"]:
        r.update(probe_forget_acc=50.0, relearn_steps=40)
    capped = next(r for r in results["rows"] if r["paradigm"] == "lora" and r["epochs"] == 10)
    capped.update(relearn_steps=200, relearn_capped=True)
    folded = next(r for r in results["rows"] if r["paradigm"] == "pruned" and r["epochs"] == 10)
    folded.update(relearn_steps=200.0, relearn_steps_std=0.0, relearn_capped=True)  # capped in some seed
    table = evaluation_table(results)
    lora = next(x for x in table.splitlines() if x.startswith("| LoRA |"))
    pruned = next(x for x in table.splitlines() if x.startswith("| Pruned |"))
    finetune = next(x for x in table.splitlines() if x.startswith("| Finetune |"))
    assert "| >200 |" in lora and "| >200 ± 0 |" in pruned and "| 40 |" in finetune
    assert "relearn_max_steps = 200" in table


def test_pruned_sparsity_below_the_pruning_amount_carries_its_reason():
    """Reference mask mode: the zeros are set once and fine-tuning regrows them, so "sparsity 0.0"
    beside "50% L2-pruned" is marked and explained."""
    from prunelora_keras.experiment.report import REGROWN

    results = _wide_results()
    for r in results["rows"]:
        if r["paradigm"] in ("pruned", "pruned_lora"):
            r.update(pruned_units={"dense": 8}, sparsity=0.0)
    pruned_lora = next(r for r in results["rows"] if r["paradigm"] == "pruned_lora" and r["epochs"] == 10)
    pruned_lora["sparsity"] = 50.0  # still at the pruning amount: nothing to explain
    lines = paper_table(results).splitlines()
    cells = {x.split(" | ")[0].strip("| "): x.strip(" |").split(" | ")[-1] for x in lines if x.startswith("| ")}
    assert cells["Pruned"] == "0.0" + REGROWN and cells["Pruned LoRA"] == "50.0" and cells["Finetune"] == "0.0"
    note = next(x for x in lines if x.startswith(REGROWN))
    assert "50%" in note and "pruned.mode, pruned_lora.mode = reference" in note and "regrows" in note  # (before methods
    results["config"]["unlearn"]["prune_mode"] = "persistent"                       # owned their knobs)
    assert REGROWN not in paper_table(results)
    results["config"]["methods"] = {"pruned": {"amount": 0.25, "mode": "reference"}}  # today's: the method's own
    note = next(x for x in paper_table(results).splitlines() if x.startswith(REGROWN))
    assert "25%" in note and "--set pruned.mode=persistent" in note
    results["config"]["methods"]["pruned"]["mode"] = "persistent"
    assert REGROWN not in paper_table(results)


def test_a_random_forgetting_report_names_its_unseen_set_and_has_no_forget_class_columns():
    """Forgetting samples leaves no test image of a forgotten class: the accuracy table has no "test, forget
    class" column, the evaluation table no test probe, and RMIA's note names the test set."""
    from prunelora_keras.experiment.report import accuracy_table, evaluation_table

    def tables(test_retain, probe_test):
        results = _wide_results()
        results["data"].update(test=2000, test_retain=test_retain)
        for r in results["rows"]:
            r.update(probe_forget_acc=50.0, MIA_rmia_auc=55.0, **({"probe_forget_acc_test": 40.0} if probe_test else {}))
        for stage in results["stages"].values():
            stage["accuracies"].update(test_retain=97.0, **({"test_forget": 1.0} if probe_test else {}))
        return accuracy_table(results), evaluation_table(results)

    accuracies, evaluation = tables(1800, probe_test=True)  # class-wise: 200 test images of the class
    assert "test, forget class" in accuracies and "probe test" in evaluation
    assert "half of the forgotten class's test images" in evaluation and "not on its scale" in evaluation
    accuracies, evaluation = tables(2000, probe_test=False)  # random: every test image is of a kept class
    assert "test, forget class" not in accuracies and "test, remaining" not in accuracies
    assert "probe test" not in evaluation and "half of the test set" in evaluation
