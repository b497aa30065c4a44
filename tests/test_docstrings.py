"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["prunelora_keras.metrics", "prunelora_keras.representation", "prunelora_keras.relearn",
           "prunelora_keras.pruning", "prunelora_keras.sweep", "prunelora_keras.features", "prunelora_keras.lora",
           "prunelora_keras.api", "prunelora_keras.methods", "prunelora_keras.methods.registry",
           "prunelora_keras.methods.common", "prunelora_keras.step", "prunelora_keras.forgetting_quality",
           "prunelora_keras.multihost", "prunelora_keras.predict", "prunelora_keras.checks", "prunelora_keras.options",
           "prunelora_keras.terminal", "prunelora_keras.method_names"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 1, result


def test_the_public_namespace_is_documented():
    """Every name in ``prunelora_keras.__all__`` resolves; functions document Args, Returns and an
    example; classes and modules have more than a one-line docstring."""
    import inspect

    import prunelora_keras as plk

    for name in plk.__all__:
        if name == "__version__":
            continue
        obj = getattr(plk, name)
        doc = inspect.getdoc(obj) or ""
        if inspect.isfunction(obj):
            assert all(part in doc for part in ("Args:", "Returns:", "Example")), name
        else:
            assert len(doc.strip().splitlines()) >= 3, name
