"""THE registry of unlearning methods: one name, one ``Method``, read by everything.

A method is what it hands the one training loop (``train.Trainer``): ``Method.prepare(ctx)``
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Method", "MethodContext", "Plan", "Targets", "get", "label", "names", "register", "RETRAIN"]

RETRAIN = "retrain"  # the exact baseline: a new model trained from scratch on D_r (the experiment trains it)


@dataclass
class Targets:
    """Which layers (regular expressions over layer names, as peft's ``target_modules``) a method touches.

    ``prune``: layers whose output units a pruned method may zero; ``lora``: layers that get
    adapters; ``train_in_full``: layers trained in full beside the adapters (peft's
    ``modules_to_save``); ``classifier``: the name of the classifier layer (None: unknown);
    ``prune_heads``: (blocks, heads) whose attention heads are pruned too (the package's ViT).
    """

    prune: list[str] = field(default_factory=list)
    lora: list[str] = field(default_factory=list)
    train_in_full: list[str] = field(default_factory=list)
    classifier: str | None = None
    prune_heads: tuple[list[str], int] | None = None


@dataclass
class MethodContext:
    """What a method's ``prepare`` receives.

    Args:
        model: a fresh copy of the original model, its BatchNorm policy applied; the method may
            change it in place (prune it) or return a new one (adapters).
        options: the unlearning options (``config.UnlearnConfig``: learning rates, rank, ...).
        retain, forget: D_r and D_f as ``data.Subset`` (``x``, ``y``) in the trainer's input domain.
        num_classes: the classifier's width.
        mean, std: the normalisation the trainer applies (uint8 images: after ``/ 255``; float
            inputs: (0,) and (1,), i.e. none).
        seed: the run's seed (adapter init, random labels, data order).
        targets: the layers the method may prune / wrap (``Targets``).
        drop_last: whether the loop drops an epoch's last partial batch.
        eval_batch_size: batch size of inference passes a method makes while preparing (SalUn).
        epochs: the number of epochs the loop will train.
        forget_classes: the classes D_f holds (class-wise forgetting; empty otherwise), for the
            pruning diagnostics.
    """

    model: Any
    options: Any
    retain: Any
    forget: Any
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    targets: Targets
    drop_last: bool = False
    eval_batch_size: int = 512
    epochs: int = 10
    forget_classes: tuple[int, ...] = ()

    def steps_per_epoch(self, n: int, batch_size: int | None = None) -> int:
        """Steps of one epoch over ``n`` samples at ``batch_size`` (default ``options.batch_size``)."""
        from prunelora_keras.data import num_batches

        return num_batches(n, batch_size or self.options.batch_size, self.drop_last)


@dataclass
class Plan:
    """What a method hands the loop.

    Args:
        model: the model to train (and, merged if it has adapters, to evaluate).
        train_vars: the variables that receive gradients.
        optimizer: an optax transformation over them.
        description: one line for the log ("gradient ascent on D_f, lr 1e-4").
        x, y: the plain data stream (shuffled per epoch), unless ``stream`` is given.
        labels_for_epoch: labels for each epoch instead of ``y`` (random labels drawn per epoch).
        stream: a method's own batch stream, ``stream(epoch, rng) -> batches`` with
            ``steps_per_epoch`` (e.g. retain and forget batches side by side).
        loss: ``loss(step.LossInputs) -> scalar``; None: cross-entropy on the one part.
        teacher: (trainable values, non-trainable values) of a frozen teacher with the model's
            architecture (SCRUB); None: no teacher.
        masks: {variable path: 0/1 array} the loop enforces after every update.
        uses_lora: the model has adapters (merged before evaluation).
        pruned: what the pruning step zeroed (``pruning.PruneResult``), for the diagnostics.
        keras_recipe: the ``config.TrainConfig`` for Keras's fit on other backends; None: the
            method runs on the jax backend only.
        share_key: equal for plans whose compiled steps may be shared (same optimiser, schedule
            and length); None: never shared.
        prefix_cacheable: the frozen prefix of the model may be replaced by cached features.
    """

    model: Any
    train_vars: list
    optimizer: Any
    description: str = ""
    x: Any = None
    y: np.ndarray | None = None
    labels_for_epoch: Callable[[int], np.ndarray] | None = None
    stream: Any = None
    loss: Callable | None = None
    teacher: tuple[list, list] | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    uses_lora: bool = False
    pruned: Any = None
    keras_recipe: Any = None
    share_key: str | None = None
    prefix_cacheable: bool = False

    @property
    def trainable_params(self) -> int:
        """How many values train."""
        return int(sum(int(np.prod(v.shape)) for v in self.train_vars))

    @property
    def pruned_layers(self) -> list[str]:
        """The layers whose variables the pruning step masked."""
        return [] if self.pruned is None else sorted({path.split("/")[0] for path in self.pruned.masks})

    def eval_model(self) -> Any:
        """The model to evaluate and save: adapters merged into plain Dense/Conv2D layers."""
        if not self.uses_lora:
            return self.model
        from prunelora_keras.lora import merge

        return merge(self.model)


@dataclass(frozen=True)
class Method:
    """One unlearning method under one name.

    Args:
        name: the registry name (``--paradigms``, ``unlearn(method=...)``, the results' rows).
        label: the report's label ("Pruned LoRA").
        prepare: ``prepare(MethodContext) -> Plan``.
        summary: one line on what it does and where it comes from.
        kind: "paper" (the paper's paradigms) or "baseline" (methods of the literature); the
            report lists them in registration order within each kind.
        options: the names of the ``UnlearnConfig`` options the method reads (for the docs).
        keras_fit: the method also runs through Keras's ``fit`` on the torch and tensorflow
            backends (its plan has a ``keras_recipe``, plain cross-entropy and no batch stream).
    """

    name: str
    label: str
    prepare: Callable[[MethodContext], Plan] | None
    summary: str = ""
    kind: str = "baseline"
    options: tuple[str, ...] = ()
    keras_fit: bool = False


def jax_only(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that need the jax backend (``retrain`` never does)."""
    return [n for n in names if n != RETRAIN and not get(n).keras_fit]


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (the command, the config and ``unlearn`` see it at once).

    Args:
        method: the ``Method``; its name must be a lowercase identifier.
        replace: allow replacing a registered method of the same name.
    Returns:
        ``method``.

    Example:
        >>> import optax
        >>> from prunelora_keras import methods
        >>> def prepare(ctx):  # fine-tune the classifier only
        ...     head = ctx.model.get_layer(ctx.targets.classifier)
        ...     return methods.Plan(ctx.model, list(head.trainable_variables), optax.adam(1e-3),
        ...                         "head only", x=ctx.retain.x, y=ctx.retain.y)
        >>> _ = methods.register(methods.Method("head_only", "Head only", prepare), replace=True)
        >>> "head_only" in methods.names()
        True
        >>> _ = methods.registry._REGISTRY.pop("head_only")  # (the example tidies up after itself)
    """
    if not method.name.isidentifier() or method.name != method.name.lower():
        raise ValueError(f"a method's name must be a lowercase identifier, got {method.name!r}")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is registered already; pass replace=True to replace it")
    _REGISTRY[method.name] = method
    return method


def _load_builtins() -> None:
    import prunelora_keras.methods  # noqa: F401  (importing the package registers the built-in methods)


def names(kind: str | None = None) -> tuple[str, ...]:
    """Every registered method name (``retrain`` first), or those of one ``kind``."""
    _load_builtins()
    return tuple(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def get(name: str) -> Method:
    """The method registered as ``name``; ValueError naming the registered ones otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def label(name: str) -> str:
    """The report's label of a method (the name itself for an unknown one)."""
    _load_builtins()
    return _REGISTRY[name].label if name in _REGISTRY else name


def by_kind(order: Sequence[str]) -> list[str]:
    """``order`` sorted as the registry lists the methods (unknown names last, in their order)."""
    known = list(names())
    return sorted(order, key=lambda n: known.index(n) if n in known else len(known))
