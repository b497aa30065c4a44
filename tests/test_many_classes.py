"""Data sets of 100 and 200 classes (CIFAR-100, TinyImageNet): the whole run works and its per-class
tables and plot stay readable."""

import json

import numpy as np
import pytest

from prunelora_keras.experiment.sweep import WIDE_CLASSES, per_class_table, plot_per_class


def _folded(classes: int) -> dict:
    rng = np.random.default_rng(0)
    per_class = []
    for c in range(classes):
        rows = [{"paradigm": p, "epochs": 10, "status": "ok", "UA": float(rng.uniform(0, 100)), "RA": 90.0 + c % 7,
                 "probe_forget_acc": 50.0, "forget_row_pruned": bool(c % 2)} for p in ("retrain", "pruned_lora")]
        per_class.append({"class": c, "class_name": f"name{c}", "rows": rows})
    mean_rows = [{"paradigm": p, "epochs": 10, "status": "ok"} for p in ("retrain", "pruned_lora")]
    return {"per_class": per_class, "rows": mean_rows, "config": {"model": {"name": "vit"}, "preset": "quick"},
            "seeds": [0]}


def _section(table: str, title: str) -> list[str]:
    """The lines of one metric's table: its title, a blank line, then the table itself."""
    lines = table.splitlines()
    start = lines.index(title)
    end = next((i for i in range(start + 2, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def test_per_class_tables_turn_past_a_dozen_classes_and_keep_every_value():
    narrow = _section(per_class_table(_folded(10)), "UA per forget class:")
    assert narrow[2].startswith("| paradigm | 0 | 1 |") and len(narrow) == 4 + 2  # a row per paradigm
    folded = _folded(100)
    table = per_class_table(folded)
    ua = _section(table, "UA per forget class:")
    assert ua[0] == "UA per forget class:" and ua[2] == "| class | Retrain | Pruned LoRA |"
    assert len(ua) == 4 + 100 + 1 and ua[-1].startswith("| mean |")  # a row per class, then the mean
    row_42 = next(line for line in ua if line.startswith("| 42 name42 |"))
    expected = folded["per_class"][42]["rows"][1]["UA"]
    assert row_42.split("|")[3].strip() == f"{expected:.1f}"
    means = [float(c["rows"][1]["UA"]) for c in folded["per_class"]]
    assert ua[-1].split("|")[3].strip() == f"{np.mean(means):.1f}"
    assert max(len(line) for line in table.splitlines()) < 80  # no line a hundred columns wide
    pruned = _section(table, "forget row pruned per forget class:")
    assert pruned[5] == "| 1 name1 | yes | yes |" and pruned[-1] == "| mean | 0.50 | 0.50 |"
    assert WIDE_CLASSES < 100


def test_the_per_class_plot_at_200_classes(tmp_path):
    plot_per_class(_folded(200), tmp_path / "per_class.png")
    from PIL import Image

    with Image.open(tmp_path / "per_class.png") as image:
        width, height = image.size
    assert width >= 2000 and height > 500  # the figure widens with the classes instead of crowding them


@pytest.mark.filterwarnings("ignore::UserWarning")  # random images: every model is at chance, by design
def test_a_whole_run_at_100_classes(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from prunelora_keras.experiment.run import main

    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c in range(100):
        (tmp_path / "imgs" / f"k{c:03d}").mkdir(parents=True)
        for k in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
            (tmp_path / "imgs" / f"k{c:03d}" / f"{k}.png").write_bytes(buf.getvalue())
    out = tmp_path / "run"
    assert main(["--model", "vit", "--preset", "quick", "--dataset", f"folder:{tmp_path / 'imgs'}", "--forget-class",
                 "42", "--paradigms", "retrain,finetune,pruned_lora", "--epochs", "1", "--set", "pretrain.epochs=1",
                 "--set", "model.depth=1", "--set", "eval.relearn_max_steps=2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["train"] == 400 and results["data"]["forget"] == 4
    rows = {r["paradigm"]: r for r in results["rows"]}
    assert all(rows[p]["status"] == "ok" for p in ("retrain", "finetune", "pruned_lora"))
    assert rows["pruned_lora"]["classifier_rows_pruned"] and len(rows["pruned_lora"]["classifier_rows_pruned"]) == 50
    for key in ("UA", "RA", "TA", "MIA_confidence_svc", "probe_forget_acc"):
        assert np.isfinite(rows["finetune"][key]), key
    assert (out / "metrics.png").is_file() and (out / "results.md").is_file()
