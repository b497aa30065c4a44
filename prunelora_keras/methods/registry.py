"""THE registry of unlearning methods: one name, one ``Method``, read by everything.

A method (``base.Method``) is what it hands the one training loop (``training.loop.Trainer``): ``Method.prepare(ctx)``
takes a fresh copy of the original model and the run's data and options (``MethodContext``) and
returns a ``Plan``: the model to train (pruned, with adapters), which variables train, masks to
enforce, the optimiser, the data stream, the loss (a pure function of the step's logits, see
``step.LossInputs``) and, for distillation methods, a frozen teacher. The loop, the evaluation
and the report are the same for every method.

The command's ``--paradigms``, the configuration's validation, the report's labels and
``prunelora_keras.unlearn(method=...)`` all read this registry; ``register`` adds a user's own
method to all of them at once.

Example:
    >>> from prunelora_keras import methods
    >>> "pruned_lora" in methods.names()
    True
    >>> methods.label("pruned_lora")
    'Pruned LoRA'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from prunelora_keras.methods import amun, bad_teacher, baselines, boundary, msg, neggrad, paper, scrub, ssd
from prunelora_keras.methods.base import RETRAIN, Method
from prunelora_keras.methods.hparams import HParams
from prunelora_keras.methods.options import UnlearnConfig

__all__ = ["get", "label", "names", "register", "by_kind", "jax_only"]


def jax_only(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that need the jax backend (``retrain`` never does)."""
    return [n for n in names if n != RETRAIN and not get(n).keras_fit]


# the built-in methods, in the order the report lists them; ``register`` adds a user's own
_REGISTRY: dict[str, Method] = {m.name: m for m in (*paper.METHODS, *baselines.METHODS, *neggrad.METHODS,
                                                    *scrub.METHODS, *ssd.METHODS, *bad_teacher.METHODS,
                                                    *msg.METHODS, *boundary.METHODS, *amun.METHODS)}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (the command, the config and ``unlearn`` see it at once).

    Args:
        method: the ``Method``; its name must be a lowercase identifier.
        replace: allow replacing a registered method of the same name.
    Returns:
        ``method``.

    Example:
        >>> import dataclasses, optax
        >>> from prunelora_keras import methods
        >>> from prunelora_keras.methods.hparams import HParams, hparam, POSITIVE
        >>> @dataclasses.dataclass(frozen=True)
        ... class HeadOnly(HParams):
        ...     lr: float = hparam(1e-3, "learning rate", check=POSITIVE)
        >>> def prepare(ctx):  # fine-tune the classifier only, at its own learning rate
        ...     head = ctx.model.get_layer(ctx.targets.classifier)
        ...     return methods.Plan(model=ctx.model, train_vars=list(head.trainable_variables),
        ...                         optimizer=optax.adam(ctx.hparams.lr), description="head only",
        ...                         x=ctx.retain.x, y=ctx.retain.y)
        >>> _ = methods.register(methods.Method("head_only", "Head only", prepare, hparams=HeadOnly), replace=True)
        >>> "head_only" in methods.names()
        True
        >>> _ = methods.registry._REGISTRY.pop("head_only")  # (the example tidies up after itself)
    """
    if not method.name.isidentifier() or method.name != method.name.lower():
        raise ValueError(f"a method's name must be a lowercase identifier, got {method.name!r}")
    hp = method.hparams
    if not (isinstance(hp, type) and issubclass(hp, HParams) and dataclasses.is_dataclass(hp)
            and hp.__dataclass_params__.frozen):
        raise ValueError(f"method {method.name!r}: hparams must be a frozen dataclass subclassing hparams.HParams, "
                         f"got {hp!r}")
    try:
        hp()
    except TypeError as exc:
        raise ValueError(f"method {method.name!r}: every field of {hp.__name__} needs a default ({exc})") from None
    shared = {f.name for f in dataclasses.fields(UnlearnConfig)} & {f.name for f in dataclasses.fields(hp)}
    if shared:
        raise ValueError(f"method {method.name!r}: {hp.__name__}.{sorted(shared)[0]} has the name of a shared option "
                         "(options.UnlearnConfig), so unlearn(..., key=value) could not tell them apart; rename it")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is registered already; pass replace=True to replace it")
    _REGISTRY[method.name] = method
    return method


def names(kind: str | None = None) -> tuple[str, ...]:
    """Every registered method name (``retrain`` first), or those of one ``kind``."""
    return tuple(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def get(name: str) -> Method:
    """The method registered as ``name``; ValueError naming the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def label(name: str) -> str:
    """The report's label of a method (the name itself for an unknown one)."""
    return _REGISTRY[name].label if name in _REGISTRY else name


def by_kind(order: Sequence[str]) -> list[str]:
    """``order`` sorted as the registry lists the methods (unknown names last, in their order)."""
    known = list(names())
    return sorted(order, key=lambda n: known.index(n) if n in known else len(known))
