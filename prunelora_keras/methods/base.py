"""What a method is: a ``Method`` whose ``prepare(MethodContext)`` returns a ``Plan`` for the one loop.

A method is what it hands the one training loop (``training.loop.Trainer``): ``Method.prepare(ctx)``
takes a fresh copy of the original model and the run's data and options (``MethodContext``) and
returns a ``Plan``: the model to train (pruned, with adapters), which variables train, masks to
enforce, the optimiser, the data stream, the loss (a pure function of the step's logits, see
``training.step.LossInputs``) and, for distillation methods, a frozen teacher. The loop, the
evaluation and the report are the same for every method. The names live in ``registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunelora_keras.data.augment import Preprocess
from prunelora_keras.methods.hparams import HParams

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


@dataclass(kw_only=True)
class MethodContext:
    """What a method's ``prepare`` receives.

    Args:
        model: a fresh copy of the original model, its BatchNorm policy applied; the method may
            change it in place (prune it) or return a new one (adapters).
        options: the options every method shares (``options.UnlearnConfig``: batch size, BN policy, ...).
        hparams: the method's own hyperparameters, an instance of its ``Method.hparams`` dataclass
            (``prepare_method`` checks the type).
        retain, forget: D_r and D_f as ``data.Subset`` (``x``, ``y``) in the trainer's input domain.
        num_classes: the classifier's width.
        preprocess: how the trainer turns the stored inputs into the model's (``Dataset.preprocess``;
            ``Preprocess()`` for float inputs used as they are).
        seed: the run's seed (adapter init, random labels, data order).
        targets: the layers the method may prune / wrap (``Targets``).
        drop_last: whether the loop drops an epoch's last partial batch.
        eval_batch_size: batch size of inference passes a method makes while preparing (SalUn).
        epochs: the number of epochs the loop will train.
        forget_classes: the classes D_f holds (class-wise forgetting; empty otherwise), for the
            pruning diagnostics.
        progress: where a long preparation (an adversarial search) reports its progress, one line at
            a time; None: silent (``prepare_method`` sets it to its log when verbose).
    """

    model: Any
    options: Any
    hparams: Any
    retain: Any
    forget: Any
    num_classes: int
    preprocess: Preprocess
    seed: int
    targets: Targets
    drop_last: bool = False
    eval_batch_size: int = 512
    epochs: int = 10
    forget_classes: tuple[int, ...] = ()
    progress: Callable[[str], None] | None = None

    def steps_per_epoch(self, n: int, batch_size: int | None = None) -> int:
        """Steps of one epoch over ``n`` samples at ``batch_size`` (default ``options.batch_size``)."""
        from prunelora_keras.data.batches import num_batches

        return num_batches(n, batch_size or self.options.batch_size, self.drop_last)


@dataclass(kw_only=True)
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
            architecture (SCRUB), or one per batch part, ``{part: (...)}`` (Bad Teacher); None: no teacher.
        joint: the stream's batch parts go through the model in one forward pass, as one mixed
            batch (``training.step.StepSpec.joint``).
        masks: {variable path: 0/1 array} the loop enforces after every update.
        uses_lora: the model has adapters (merged before evaluation).
        pruned: what the pruning step zeroed (``pruning.PruneResult``), for the diagnostics.
        keras_recipe: the ``config.TrainConfig`` for Keras's fit on other backends; None: the
            method runs on the jax backend only.
        share_key: equal for plans whose compiled steps may be shared (same optimiser, schedule
            and length); None: never shared.
        prefix_cacheable: the frozen prefix of the model may be replaced by cached features.
        num_classes: the width of the training targets when the trained model's head is wider than the
            data set's classes (Boundary Expanding's shadow class); None: the run's.
        finalize: the trained model (adapters merged) -> the model to evaluate and save, with the
            data set's classes as its outputs (Boundary Expanding drops its shadow unit); None: as it is.
            A pool scores its members on their first ``MethodContext.num_classes`` logits, the same
            thing for a dropped output unit.
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
    teacher: tuple[list, list] | dict[str, tuple[list, list]] | None = None
    joint: bool = False
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    uses_lora: bool = False
    pruned: Any = None
    keras_recipe: Any = None
    share_key: str | None = None
    prefix_cacheable: bool = False
    num_classes: int | None = None
    finalize: Callable[[Any], Any] | None = None

    @property
    def trainable_params(self) -> int:
        """How many values train."""
        return int(sum(int(np.prod(v.shape)) for v in self.train_vars))

    @property
    def pruned_layers(self) -> list[str]:
        """The layers whose variables the pruning step masked."""
        return [] if self.pruned is None else sorted({path.split("/")[0] for path in self.pruned.masks})

    def eval_model(self) -> Any:
        """The model to evaluate and save: adapters merged into plain Dense/Conv2D layers, then ``finalize``."""
        model = self.model
        if self.uses_lora:
            from prunelora_keras.models.lora import merge

            model = merge(model)
        return model if self.finalize is None else self.finalize(model)


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
        hparams: the method's hyperparameter dataclass (``hparams.HParams`` subclass, frozen): the
            command's ``--set <name>.<key>``, ``unlearn(..., key=value)``, ``--list-keys`` and the
            docs read its fields, defaults and checks.
        keras_fit: the method also runs through Keras's ``fit`` on the torch and tensorflow
            backends (its plan has a ``keras_recipe``, plain cross-entropy and no batch stream).
        trains: False for a method that trains no steps (SSD): its epochs change nothing, so the
            search (``prunelora_keras.tune``) does not search them.
    """

    name: str
    label: str
    prepare: Callable[[MethodContext], Plan] | None
    summary: str = ""
    kind: str = "baseline"
    hparams: type = HParams
    keras_fit: bool = False
    trains: bool = True
