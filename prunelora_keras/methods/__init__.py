"""Unlearning methods: one registry (``registry.py``), one module per family of entries.

Importing this package registers the built-in methods, in the order the report lists them:
``retrain`` and the paper's paradigms (``paper.py``), the baselines of Jia et al. and SalUn
(``baselines.py``), NegGrad+ (``neggrad.py``) and SCRUB (``scrub.py``).

Example:
    >>> from prunelora_keras import methods
    >>> methods.names()[:5]
    ('retrain', 'finetune', 'pruned', 'lora', 'pruned_lora')
"""

from prunelora_keras.methods.registry import (RETRAIN, Method, MethodContext, Plan, Targets, by_kind, get, jax_only,
                                              label, names, register)
from prunelora_keras.methods import paper  # noqa: E402,F401  (registers retrain and the paradigms)
from prunelora_keras.methods import baselines  # noqa: E402,F401
from prunelora_keras.methods import neggrad  # noqa: E402,F401
from prunelora_keras.methods import scrub  # noqa: E402,F401

__all__ = ["RETRAIN", "Method", "MethodContext", "Plan", "Targets", "by_kind", "get", "jax_only", "label", "names", "register"]
