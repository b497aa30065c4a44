"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["prunelora_keras.evaluation.metrics", "prunelora_keras.evaluation.representation", "prunelora_keras.evaluation.relearn",
           "prunelora_keras.models.pruning", "prunelora_keras.experiment.sweep", "prunelora_keras.evaluation.features", "prunelora_keras.models.lora",
           "prunelora_keras.api.library", "prunelora_keras.methods", "prunelora_keras.methods.registry",
           "prunelora_keras.methods.common", "prunelora_keras.training.step", "prunelora_keras.evaluation.forgetting_quality",
           "prunelora_keras.parallel.jobs", "prunelora_keras.training.inference", "prunelora_keras.api.checks", "prunelora_keras.methods.options",
           "prunelora_keras.experiment.terminal", "prunelora_keras.methods.builtin_names", "prunelora_keras.methods.hparams",
           "prunelora_keras.training.epochs", "prunelora_keras.training.caches", "prunelora_keras.evaluation.settings",
           "prunelora_keras.evaluation.ulira", "prunelora_keras.api.targets", "prunelora_keras.models.cpu_ops",
           "prunelora_keras.models.layers", "prunelora_keras.models.airbench"]


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
