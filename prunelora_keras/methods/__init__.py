"""Unlearning methods: what a method is (``base.py``), the registry of names (``registry.py``), and
one module per family of entries: the paper's paradigms (``paper.py``), the baselines of Jia et
al. and SalUn (``baselines.py``), NegGrad+ (``neggrad.py``) and SCRUB (``scrub.py``).

The names below load on first use (PEP 562), so that the light modules of this package
(``builtin_names.py``, ``options.py``, ``hparams.py``, ``builtin_hparams.py``: what the command checks before it imports
Keras) stay light. Each method's hyperparameters are a frozen dataclass (``builtin_hparams.py``).

Example:
    >>> from prunelora_keras import methods
    >>> methods.names()[:5]
    ('retrain', 'finetune', 'pruned', 'lora', 'pruned_lora')
"""

import importlib

_BASE = ("RETRAIN", "Method", "MethodContext", "Plan", "Targets")
_REGISTRY = ("by_kind", "get", "jax_only", "label", "names", "register")
_HPARAMS = ("HParams", "hparam", "check_hparams", "describe")
__all__ = sorted(_BASE + _REGISTRY + _HPARAMS)


def __getattr__(name: str):
    if name in _BASE:
        return getattr(importlib.import_module("prunelora_keras.methods.base"), name)
    if name in _HPARAMS:
        return getattr(importlib.import_module("prunelora_keras.methods.hparams"), name)
    if name in _REGISTRY:
        return getattr(importlib.import_module("prunelora_keras.methods.registry"), name)
    raise AttributeError(f"module 'prunelora_keras.methods' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
