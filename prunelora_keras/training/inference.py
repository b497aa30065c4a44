"""The compiled evaluation pass: logits over a whole data set in padded, jitted batches.

One compiled function serves every model of one architecture (``architecture_key``): the
experiment evaluates many (the original, Retrain, each method at each epoch column), and
compiling once per architecture instead of once per model saves most of the evaluation time.
The last partial batch is padded to the batch size and cut back, so one shape serves every set.

Inside ``evaluation_devices(distribution)`` (the pipeline's whole run) every pass is data-parallel
like training: each padded batch is split over the distribution's devices, across all processes
of a multi-process job, the model's values replicated, and the logits gathered back whole in every
process (each process feeds only its own devices' rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from prunelora_keras.data.augment import Preprocess, infer_images
from prunelora_keras.parallel.distributed import Placement
from prunelora_keras.parallel.multihost import host_value
from prunelora_keras.training.caches import COMPILED

__all__ = ["accuracy", "architecture_key", "evaluation_devices", "padded_batches", "predict_logits", "predict_inputs",
           "tta_logits", "tta_views"]

_PLACEMENT: list[Placement | None] = [None]  # the evaluation placement of the innermost evaluation_devices block


@contextlib.contextmanager
def evaluation_devices(distribution: Any) -> Iterator[None]:
    """Run every evaluation pass inside the block data-parallel over ``distribution``'s devices.

    Args:
        distribution: a ``keras.distribution.DataParallel`` (``distributed.data_parallel``), or None
            for one device (no change).

    Example:
        >>> with evaluation_devices(None):
        ...     pass
    """
    previous = _PLACEMENT[0]
    _PLACEMENT[0] = Placement(distribution) if distribution is not None else None
    try:
        yield
    finally:
        _PLACEMENT[0] = previous


def on_evaluation_devices(values: Any) -> Any:
    """``values`` (a pytree of arrays) replicated over the evaluation devices (as they are on one)."""
    placement = _PLACEMENT[0]
    return values if placement is None else placement.replicate(values)


def architecture_key(model: keras.Model) -> str:
    """Equal for two models that compute the same function of (variables, input).

    The pipeline evaluates many models of one architecture (the original, Retrain, each
    paradigm's model, each merged LoRA model at every epoch column); keyed by this, one compiled
    evaluation function serves them all instead of one XLA compilation each.
    """
    config = dict(model.get_config())
    config.pop("name", None)
    shapes = [(tuple(v.shape), str(v.dtype)) for v in model.trainable_variables]
    shapes += [("nt", tuple(v.shape), str(v.dtype)) for v in model.non_trainable_variables]
    text = json.dumps([type(model).__name__, config, shapes], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def model_key(model: keras.Model) -> str:
    """The cache key of ``model``'s compiled functions: its architecture (``architecture_key``), or,
    for a model without a complete config, the object itself (the cache keeps the model alive)."""
    try:
        return architecture_key(model)
    except (NotImplementedError, TypeError):
        return f"id:{id(model)}"


def cached_jit(kind: str, model: keras.Model, fn: Callable, *key: Any) -> Callable:
    """``jax.jit(fn)``, compiled once per (kind, ``model_key(model)``, key): a model of the same
    architecture reuses the first one's function (its ``stateless_call`` computes this one's)."""
    return COMPILED.get((kind, model_key(model), *key), lambda: (model, jax.jit(fn)))[1]


def _eval_fn(model: keras.Model, preprocess: Preprocess) -> Callable:
    """A jitted (trainable, non-trainable, uint8 batch) -> logits function, cached per architecture."""

    def logits_fn(trainable, non_trainable, images):
        return infer_images(model, trainable, non_trainable, images, preprocess).astype(jnp.float32)

    return cached_jit("eval", model, logits_fn, preprocess)


def predict_logits(model: keras.Model, x: np.ndarray, preprocess: Preprocess, batch_size: int = 512,
                   values: tuple[list, list] | None = None) -> np.ndarray:
    """Logits over a whole data set in compiled batches; the last batch is padded, then cut back.

    Args:
        model: any Keras classifier whose output is its logits.
        x: the stored inputs, first axis the samples (uint8 images, or floats in the model's domain).
        preprocess: how ``x`` becomes the model's input (``Dataset.preprocess``; ``Preprocess()``
            scales uint8 images to [0, 1] and passes floats as they are).
        batch_size: the compiled batch (one compilation for every set).
        values: (trainable, non-trainable) values to use instead of the model's own variables
            (e.g. ``Trainer.current_values()``), in the order of ``model.trainable_variables`` and
            ``model.non_trainable_variables``; jax backend only.
    Returns:
        float32 logits, one row per sample. On Keras's other backends: the model's own inference
        call, batch by batch.

    Example:
        >>> import prunelora_keras as plk
        >>> from prunelora_keras.models.vit import simple_vit
        >>> m = simple_vit(10, (8, 8, 3), 2, 16, 1, 2, 16)
        >>> predict_logits(m, np.zeros((3, 8, 8, 3), np.uint8), plk.Preprocess()).shape
        (3, 10)
    """
    if keras.backend.backend() != "jax":
        out = [keras.ops.convert_to_numpy(model(np.asarray(preprocess(x[i:i + batch_size])),
                                                training=False)).astype(np.float32)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)
    fn = _eval_fn(model, preprocess)
    if values is not None:
        trainable, non_trainable = values
    else:
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
    trainable, non_trainable = on_evaluation_devices((trainable, non_trainable))
    out = padded_batches(lambda xb: fn(trainable, non_trainable, xb), x, batch_size)
    return out[0] if out else np.zeros((0, model.output_shape[-1]), np.float32)


def tta_views(x: np.ndarray, level: int) -> list[tuple[float, np.ndarray]]:
    """airbench's test-time views of images (n, h, w, c), each with its weight in the average of logits:
    level 0 the images; 1 the images and their mirror (1/2 each); 2 those (1/4 each) and both of them
    translated one pixel up-left and down-right with reflected borders (1/8 each).

    Args:
        x: images (n, height, width, channels), as stored.
        level: 0, 1 or 2.
    Returns:
        [(weight, views of x)], the weights summing to 1.

    Example:
        >>> [w for w, _ in tta_views(np.zeros((1, 4, 4, 3), np.uint8), 2)]
        [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    """
    if level not in (0, 1, 2):
        raise ValueError(f"tta level {level} is not 0 (none), 1 (mirror) or 2 (mirror + translate)")
    x = np.asarray(x)
    if level == 0:
        return [(1.0, x)]
    mirror = lambda a: a[:, :, ::-1]  # noqa: E731
    if level == 1:
        return [(0.5, x), (0.5, mirror(x))]
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, :h, :w], padded[:, 2:h + 2, 2:w + 2]]
    return [(0.25, x), (0.25, mirror(x))] + [(0.125, v) for s in shifted for v in (s, mirror(s))]


def tta_logits(model: keras.Model, x: np.ndarray, preprocess: Preprocess, batch_size: int = 512,
               level: int = 2) -> np.ndarray:
    """Logits averaged over airbench's test-time views (``tta_views``): level 1 mirror, level 2 mirror
    and one-pixel translations, as airbench reports its "TTA" accuracy. The plain accuracy is
    ``predict_logits``'s; report this one beside it, never instead.

    Args:
        model, x, preprocess, batch_size: as ``predict_logits``.
        level: 0 none, 1 mirror, 2 mirror + translate.
    Returns:
        float32 logits, one row per sample.

    Example:
        >>> import prunelora_keras as plk
        >>> from prunelora_keras.models import airbench
        >>> tta_logits(airbench(10, widths=(8, 16, 16), seed=0), np.zeros((3, 32, 32, 3), np.uint8), plk.Preprocess()).shape
        (3, 10)
    """
    views = tta_views(x, level)
    return sum(weight * predict_logits(model, view, preprocess, batch_size) for weight, view in views).astype(np.float32)


def padded_batches(fn: Callable, x: np.ndarray, batch_size: int, data_parallel: bool = True) -> list[np.ndarray]:
    """``fn`` over ``x`` in batches of exactly ``batch_size`` (the last one zero-padded, its outputs
    cut back), so one compilation serves every set; ``fn`` returns an array or a tuple of arrays,
    and so does the result per output, concatenated over the batches (an empty list for empty ``x``).

    Inside ``evaluation_devices`` (and with ``data_parallel``), each batch is split over the devices
    (``batch_size`` rounded up to a multiple of their count) and ``fn``'s outputs gathered whole.
    """
    placement = _PLACEMENT[0] if data_parallel else None
    if placement is not None:
        batch_size = -(-batch_size // placement.n) * placement.n
    parts = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        valid = len(xb)
        if valid < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - valid, *xb.shape[1:]), xb.dtype)])
        outputs = fn(xb if placement is None else placement.put_batch(xb))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        parts.append([host_value(o)[:valid] for o in outputs])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))] if parts else []


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct argmax predictions, in [0, 1] (0 for an empty set)."""
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0


def predict_inputs(model: keras.Model, x, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` over float inputs in its own domain (no normalisation), in compiled batches.

    Args:
        model: any Keras model; its inference call (``training=False``) is used.
        x: an array (or a list of arrays for a model with several inputs), first axis the samples.
        batch_size: the compiled batch; the last batch is padded and cut back.

    Returns:
        float32 logits, one row per sample.

    Example:
        >>> logits = predict_inputs(model, x_test.astype("float32"))  # doctest: +SKIP
    """
    arrays = [np.asarray(a) for a in (x if isinstance(x, (list, tuple)) else [x])]
    n = len(arrays[0])
    if keras.backend.backend() != "jax":
        out = [keras.ops.convert_to_numpy(model([a[i:i + batch_size] for a in arrays] if len(arrays) > 1
                                                else arrays[0][i:i + batch_size], training=False)).astype(np.float32)
               for i in range(0, n, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)

    def call(trainable, non_trainable, inputs):
        inputs = list(inputs) if len(inputs) > 1 else inputs[0]
        return model.stateless_call(trainable, non_trainable, inputs, training=False)[0].astype(jnp.float32)

    fn = cached_jit("inputs", model, call)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    index = np.arange(n)
    out = padded_batches(lambda idx: fn(trainable, non_trainable, tuple(a[idx] for a in arrays)), index, batch_size,
                         data_parallel=False)
    return out[0] if out else np.zeros((0, model.output_shape[-1]), np.float32)
