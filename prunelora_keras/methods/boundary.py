"""Boundary Unlearning (Chen, Gao, Zhang, Chen, "Boundary Unlearning: Rapid Forgetting of Deep Networks
via Shifting the Decision Space", CVPR 2023): Boundary Shrink and Boundary Expanding, two entries.

Both move D_f across the original's decision boundary instead of erasing it:

- ``boundary_shrink``: each forget image is relabelled with the class its nearest adversarial
  neighbour falls in, one FGSM step of ``bound`` (0.1 on [0, 1] pixels) on the frozen original
  (``adversarial.fgsm_labels``); then the whole network is fine-tuned on D_f alone with those labels.
  As SalUn's code (github.com/OPTML-Group/Unlearn-Saliency, ``unlearn/boundary_sh.py``) the argmax
  runs over every class, the true one included (an image the step did not move keeps its label);
  unlike it, the labels are found once on the stored images, not on every augmented batch (unlearning
  here never augments, as the authors' own code, which attacks un-augmented images).
- ``boundary_expanding``: the classifier gets one more output, the *shadow class*; every forget
  image is labelled with it and the whole network is fine-tuned on D_f; then the shadow unit is
  removed and the other units, fine-tuned, stay (the paper's "expand, then prune"; the authors'
  code keeps rows 0..n-1 of the fine-tuned head). SalUn's ``boundary_ex.py`` never removes the unit
  and scores the widened model, where a prediction of the shadow class counts as forgotten; here
  every model is scored over the data set's classes. The shadow unit starts Xavier-normal with a
  zero bias (the authors' code; ``boundary_expanding.shadow_init = "torch"``: PyTorch's Linear
  default, SalUn's).

The optimiser is the authors' code's for both: SGD, momentum 0.9, lr 1e-5, no weight decay (at batch 64
there; the run's batch size here). SalUn's re-implementation runs its default ``unlearn_lr`` 0.01 with
weight decay 5e-4 (``--set boundary_shrink.lr=0.01 --set boundary_shrink.weight_decay=5e-4``).
"""

from __future__ import annotations

import keras
import numpy as np

from prunelora_keras.methods.adversarial import fgsm_labels
from prunelora_keras.methods.base import Method, MethodContext, Plan
from prunelora_keras.methods.builtin_hparams import BoundaryExpandingHParams, BoundaryShrinkHParams
from prunelora_keras.methods.common import sgd_chain


def prepare_boundary_shrink(ctx: MethodContext) -> Plan:
    h = ctx.hparams
    if len(ctx.forget) == 0:
        raise ValueError("boundary_shrink relabels the forget samples: D_f is empty")
    _, labels = fgsm_labels(ctx.model, ctx.forget.x, ctx.forget.y, ctx.preprocess, h.bound, ctx.eval_batch_size)
    moved = float(np.mean(labels != np.asarray(ctx.forget.y)))
    return Plan(model=ctx.model, train_vars=list(ctx.model.trainable_variables), optimizer=sgd_chain(h.lr, h),
                description=f"D_f relabelled by one FGSM step of {h.bound:g} on the original ({moved:.1%} cross to "
                f"another class), lr {h.lr}", x=ctx.forget.x, y=labels.astype(np.asarray(ctx.forget.y).dtype))


WIDTH_KEYS = ("units", "filters")  # Dense's and Conv2D's output width (a 1x1 convolution head: MobileNetV3)


def classifier_layer(model: keras.Model, name: str | None, method: str) -> keras.layers.Layer:
    """The classifier ``name``, a Dense or convolution layer with an output width to widen; ValueError otherwise."""
    if name is None:
        raise ValueError(f"{method} widens the classifier but none was found: pass targets=plk.Targets(classifier=...) "
                         "naming the layer that gives the logits")
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ValueError(f"{method} rebuilds the model with a wider classifier (keras.models.clone_model): pass a "
                         "functional or Sequential model, not a subclassed one")
    layer = model.get_layer(name)
    if not any(k in layer.get_config() for k in WIDTH_KEYS) or len(outputs) != 1:
        raise ValueError(f"{method} widens the classifier {name!r}, which must be a Dense or convolution layer whose "
                         "outputs are the logits of the model's only output")
    return layer


def with_units(model: keras.Model, name: str, kernel: np.ndarray, bias: np.ndarray | None) -> keras.Model:
    """A copy of ``model`` whose Dense or convolution layer ``name`` has ``kernel.shape[-1]`` outputs and
    these weights (every other layer's weights copied by name; layers after it see the new width).

    Args:
        model: a functional or Sequential model (not modified).
        name: the Dense or convolution layer to resize.
        kernel, bias: its new weights (the last axis is the new width; ``bias`` None for a bias-free layer).
    Returns:
        the resized copy; ValueError when a layer after ``name`` fixes its width.

    Example:
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
        >>> wide = with_units(m, "head", np.ones((3, 5), np.float32), np.zeros(5, np.float32))
        >>> wide.output_shape
        (None, 5)
    """

    def clone(layer):
        config = layer.get_config()
        if layer.name == name:
            config[next(k for k in WIDTH_KEYS if k in config)] = int(kernel.shape[-1])
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
        for layer in copy.layers:
            if layer.name == name:
                layer.kernel.assign(kernel)
                if bias is not None:
                    layer.bias.assign(bias)
            elif layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
    except (ValueError, TypeError) as exc:  # a layer after the classifier fixes its width (a Dense, a Reshape)
        raise ValueError(f"the classifier {name!r} cannot change its width in this model ({exc}); Boundary Expanding "
                         "needs the logits to come from it through width-agnostic layers (Flatten, Activation)") from None
    return copy


def shadow_row(kernel_shape: tuple[int, ...], has_bias: bool, init: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The shadow unit's (kernel slice over the last axis, bias) for a widened kernel of ``kernel_shape``
    (its last axis the new width): Xavier-normal, std sqrt(2 / (fan_in + fan_out)), and 0 (``"xavier"``:
    the authors' code, which initialises the whole widened layer so) or PyTorch's default for Linear and
    Conv2d, uniform in +-1/sqrt(fan_in) for both (``"torch"``: SalUn's)."""
    rng = np.random.default_rng([seed, 4133])
    receptive = int(np.prod(kernel_shape[:-2], dtype=np.int64))
    fan_in, fan_out = kernel_shape[-2] * receptive, kernel_shape[-1] * receptive
    shape = tuple(kernel_shape[:-1])
    if init == "xavier":
        return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape).astype(np.float32), \
            (np.zeros((), np.float32) if has_bias else None)
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32), \
        (rng.uniform(-bound, bound, ()).astype(np.float32) if has_bias else None)


def without_shadow(model: keras.Model, name: str, classes: int) -> keras.Model:
    """``model`` with the classifier ``name`` cut back to its first ``classes`` outputs (the shadow unit,
    trained on D_f, removed; the other units as fine-tuned)."""
    head = model.get_layer(name)
    bias = None if getattr(head, "bias", None) is None else np.asarray(head.bias)[:classes]
    return with_units(model, name, np.asarray(head.kernel)[..., :classes], bias)


def widened(ctx: MethodContext, name: str, init: str) -> keras.Model:
    """``ctx.model`` with a shadow output on the classifier ``name``, checked: the widened model gives
    the original's logits plus one (on a few forget images), else ValueError."""
    head = classifier_layer(ctx.model, name, "boundary_expanding")
    kernel = np.asarray(head.kernel)
    bias = None if getattr(head, "bias", None) is None else np.asarray(head.bias)
    column, extra = shadow_row(kernel.shape[:-1] + (kernel.shape[-1] + 1,), bias is not None, init, ctx.seed)
    wide = with_units(ctx.model, name, np.concatenate([kernel, column[..., None]], axis=-1),
                      None if bias is None else np.append(bias, extra))
    probe = ctx.preprocess(np.asarray(ctx.forget.x[:8]))
    before = np.asarray(ctx.model(probe, training=False))
    after = np.asarray(wide(probe, training=False))
    if after.shape[-1] != ctx.num_classes + 1 or not np.allclose(after[:, :ctx.num_classes], before, rtol=1e-4,
                                                                  atol=1e-4 * (1 + np.abs(before).max())):
        raise ValueError(f"widening the classifier {name!r} did not add exactly one logit after the model's own; "
                         "Boundary Expanding needs the logits to be that layer's outputs (pass targets=plk.Targets("
                         "classifier=...) naming the right layer)")
    return wide


def prepare_boundary_expanding(ctx: MethodContext) -> Plan:
    h = ctx.hparams
    if len(ctx.forget) == 0:
        raise ValueError("boundary_expanding relabels the forget samples: D_f is empty")
    name = ctx.targets.classifier
    wide = widened(ctx, name, h.shadow_init)
    shadow = ctx.num_classes
    labels = np.full(len(ctx.forget), shadow, np.asarray(ctx.forget.y).dtype)
    return Plan(model=wide, train_vars=list(wide.trainable_variables), optimizer=sgd_chain(h.lr, h),
                description=f"D_f labelled with a shadow class {shadow} on {name!r} ({h.shadow_init} init), removed "
                f"after training, lr {h.lr}", x=ctx.forget.x, y=labels, num_classes=ctx.num_classes + 1,
                finalize=lambda trained: without_shadow(trained, name, ctx.num_classes))


# this family's entries of the registry (``registry.py``), in the report's order
METHODS = (
    Method("boundary_shrink", "Boundary Shrink", prepare_boundary_shrink,
        "D_f relabelled with its nearest wrong class by one FGSM step, then fine-tuned on (Chen et al. 2023)",
        "baseline", BoundaryShrinkHParams),
    Method("boundary_expanding", "Boundary Expanding", prepare_boundary_expanding,
        "D_f trained into a shadow class that is then removed (Chen et al. 2023)", "baseline",
        BoundaryExpandingHParams),
)
