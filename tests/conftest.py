"""Shared test setup: the package is imported first so Keras starts on the JAX backend."""

import os
from pathlib import Path

import prunelora_keras  # noqa: F401  (must precede any keras import)
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write into the user's cache; one cache per test session (reused across tests)."""
    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def clean_env() -> dict:
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    return env
