"""THE cache of compiled functions: one explicit, clearable store for every jitted or AOT-compiled
function the package reuses across models (evaluation, features, a user's inputs, shared training
steps, a pool's logits).

Compiling is the slow part of a small run (a ViT's training step takes seconds to compile and
milliseconds to run), so functions are shared between models that compute the same thing. A
shared function is only correct if its key holds everything its trace closes over: each entry's
key starts with its kind and then names every input of the trace that is not an argument (the
model's architecture with its layer configs, dtype policies and variable shapes and dtypes; the
normalisation; the optimiser, schedule and loss a step was built from; the device count).
``clear_caches`` drops them all (between experiments in one process, or to free memory); nothing
is computed differently afterwards, only compiled again (tests/test_caches.py checks both).

Example:
    >>> from prunelora_keras.training.caches import COMPILED, clear_caches
    >>> COMPILED.get(("example", 1), lambda: "built")
    'built'
    >>> COMPILED.get(("example", 1), lambda: "not built again")
    'built'
    >>> clear_caches() >= 1 and COMPILED.count("example") == 0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class CompiledFunctions:
    """A keyed store of compiled functions; keys are tuples whose first item is the kind."""

    def __init__(self) -> None:
        self._entries: dict[tuple, Any] = {}

    def get(self, key: tuple[Hashable, ...], build: Callable[[], Any]) -> Any:
        """The entry under ``key``, built by ``build()`` and stored the first time."""
        if key not in self._entries:
            self._entries[key] = build()
        return self._entries[key]

    def lookup(self, key: tuple[Hashable, ...]) -> Any | None:
        """The entry under ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: tuple[Hashable, ...], value: Any) -> Any:
        """Store ``value`` under ``key``; returns it."""
        self._entries[key] = value
        return value

    def count(self, kind: str | None = None) -> int:
        """How many entries there are (of one ``kind``)."""
        return sum(1 for k in self._entries if kind is None or k[0] == kind)

    def clear(self) -> int:
        """Drop every entry; returns how many there were."""
        n = len(self._entries)
        self._entries.clear()
        return n


COMPILED = CompiledFunctions()


def clear_caches() -> int:
    """Forget every compiled function the package keeps (``COMPILED``); later calls compile again.

    Args:
        none.
    Returns:
        how many compiled functions were dropped.

    Example:
        >>> import prunelora_keras as plk
        >>> plk.clear_caches() >= 0
        True
    """
    return COMPILED.clear()
