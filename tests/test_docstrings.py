"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["prunelora_keras.metrics", "prunelora_keras.representation", "prunelora_keras.relearn",
           "prunelora_keras.pruning", "prunelora_keras.sweep", "prunelora_keras.features", "prunelora_keras.lora"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 1, result
