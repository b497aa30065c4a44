"""The documentation generated from the code matches the code."""

import re
from pathlib import Path

from prunelora_keras import methods
from prunelora_keras.methods.hparams import hparams_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_hyperparameter_tables_of_docs_methods_are_the_registrys():
    """docs/methods.md holds, between its markers, exactly what the registered methods' dataclasses
    generate: a changed default, a new field or a new method fails here until the docs follow."""
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- hparams:begin[^>]*-->\n(.*?)<!-- hparams:end -->", text, re.S)
    assert found, "docs/methods.md lost its hparams markers"
    expected = hparams_markdown((name, methods.get(name).hparams) for name in methods.names())
    assert found.group(1) == expected, "regenerate with prunelora_keras.methods.hparams.hparams_markdown"
    for name in methods.names():
        if methods.get(name).hparams is not methods.HParams:
            assert f"#### `{name}`" in found.group(1), name


def test_the_synopses_name_every_model_preset_and_method():
    """The command's synopsis (README, docs/usage.md) lists every model, preset and registered method
    (Boundary Shrink, Boundary Expanding and AMUN were once missing from both), the search's every model."""
    from prunelora_keras.experiment.config import MODEL_NAMES, available_presets

    for path in (DOCS.parent / "README.md", DOCS / "usage.md"):
        text = path.read_text(encoding="utf-8")
        synopsis = text[text.index("python -m prunelora_keras.run --model {"):]
        synopsis = synopsis[:synopsis.index("```")]
        models = re.search(r"--model \{([^}]*)\}", synopsis).group(1).split(",")
        presets = re.search(r"--preset ([\w|-]+)\]", synopsis).group(1).split("|")
        listed = re.search(r"--paradigms ([\w,]+)\]", synopsis).group(1).split(",")
        assert sorted(models) == sorted(MODEL_NAMES), path.name
        assert sorted(presets) == sorted(available_presets()), path.name
        assert listed == list(methods.names()), (path.name, set(methods.names()) ^ set(listed))
    tune = (DOCS / "usage.md").read_text(encoding="utf-8")
    tune_models = re.search(r"prunelora_keras\.tune --model \{([^}]*)\}", tune).group(1).split(",")
    assert sorted(tune_models) == sorted(MODEL_NAMES)


def test_the_package_layout_in_docs_api_names_every_module():
    """docs/api.md's layout block names every module of the package (a new module joins it, a renamed
    one is not left under its old name: ``ensemble.py`` and ``train.py`` once were)."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    block = text[text.index("```\nprunelora_keras/\n"):]
    block = block[:block.index("```", 4)]
    package = DOCS.parent / "prunelora_keras"
    modules = [p for p in package.rglob("*.py") if p.name != "__init__.py"]
    named = set(re.findall(r"\b(\w+)\.py\b", block)) - {"__init__"}
    missing = [str(p.relative_to(package)) for p in modules if p.stem not in named]
    assert not missing, f"docs/api.md's layout lacks {missing}"
    files = {p.stem for p in [*modules, *(DOCS.parent / "examples").glob("*.py"), *(DOCS.parent / "tests").glob("*.py")]}
    gone = sorted(named - files)
    assert not gone, f"docs/api.md's layout names modules that do not exist: {gone}"
