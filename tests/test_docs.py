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
