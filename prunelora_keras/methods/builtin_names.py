"""The methods' names, without importing the methods (which import Keras, JAX and optax).

The command checks ``--paradigms`` and prints ``--help`` before anything heavy is imported, so
that a misspelled name is answered at once. ``names()`` reads the registry (``methods.registry``)
whenever it is loaded, since only then can a user's own method have been registered; before that,
the registered methods are exactly the built-in ones listed here, in the registry's order
(tests/test_run.py checks the two lists agree).

Example:
    >>> names("paper")
    ('retrain', 'finetune', 'pruned', 'lora', 'pruned_lora')
"""

from __future__ import annotations

import sys

# name -> kind, in registration order (methods/paper.py, baselines.py, neggrad.py, scrub.py, ssd.py,
# bad_teacher.py, msg.py, boundary.py, amun.py)
BUILTIN: dict[str, str] = {
    "retrain": "paper", "finetune": "paper", "pruned": "paper", "lora": "paper", "pruned_lora": "paper",
    "ga": "baseline", "rl": "baseline", "l1_sparse": "baseline", "salun": "baseline",
    "neggrad_plus": "baseline", "scrub": "baseline", "ssd": "baseline", "bad_teacher": "baseline", "msg": "baseline",
    "boundary_shrink": "baseline", "boundary_expanding": "baseline", "amun": "baseline",
}
NO_TRAINING = ("ssd",)  # built-in methods that train no steps (``Method.trains`` False)


def names(kind: str | None = None) -> tuple[str, ...]:
    """Every registered method name (``retrain`` first), or those of one ``kind`` ("paper", "baseline")."""
    registry = sys.modules.get("prunelora_keras.methods.registry")
    if registry is not None:
        return registry.names(kind)
    return tuple(n for n, k in BUILTIN.items() if kind is None or k == kind)


def hparams_type(name: str) -> type:
    """The hyperparameter dataclass of method ``name`` (``Method.hparams``), read from the registry
    when it is loaded, else from the built-in list (``builtin_hparams.BUILTIN_HPARAMS``); ValueError for an
    unknown name."""
    from prunelora_keras.methods.builtin_hparams import BUILTIN_HPARAMS

    registry = sys.modules.get("prunelora_keras.methods.registry")
    if registry is not None:
        return registry.get(name).hparams
    if name not in BUILTIN_HPARAMS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(BUILTIN_HPARAMS)}")
    return BUILTIN_HPARAMS[name]


def trains(name: str) -> bool:
    """Whether method ``name`` trains steps (``Method.trains``): read from the registry when it is
    loaded, else from the built-in list."""
    registry = sys.modules.get("prunelora_keras.methods.registry")
    if registry is not None:
        return registry.get(name).trains
    return name not in NO_TRAINING
