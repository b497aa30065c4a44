"""Penultimate features: the input of a model's classifier layer, computed with its logits in one pass.

The representation metrics (``representation.py``) need each evaluated model's features on the
same images whose logits the output metrics use; ``predict_logits_and_features`` returns both
from one compiled forward pass, so the features cost no second pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np

from prunelora_keras.train import architecture_key, padded_batches

_FEATURE_FNS: dict[str, Callable] = {}


def classifier_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces ``model``'s output: a Dense-like layer with a kernel.

    Args:
        model: a functional or Sequential Keras model with one output.
    Returns:
        The classifier layer (for the package's models, the layer named ``head``).
    Raises:
        ValueError: the output is not produced by a layer with a kernel (e.g. a softmax layer
            after the classifier, or several outputs).

    Example:
        >>> from prunelora_keras.models.vit import simple_vit
        >>> classifier_layer(simple_vit(10, (8, 8, 3), 2, 16, 1, 2, 16)).name
        'head'
    """
    outputs = model.outputs
    if len(outputs) != 1:
        raise ValueError(f"{model.name} has {len(outputs)} outputs: the features need a model with one classifier")
    layer = outputs[0]._keras_history.operation
    if not hasattr(layer, "kernel"):
        raise ValueError(f"{model.name}'s output comes from {layer.name} ({type(layer).__name__}), not a layer with a "
                         "kernel: end the model with its classifier (logits), e.g. a Dense layer")
    return layer


def feature_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers that returns (logits, penultimate features)."""
    head = classifier_layer(model)
    return keras.Model(model.inputs, [model.outputs[0], head.input], name=f"{model.name}_with_features")


def _jitted(fmodel: keras.Model, mean: tuple, std: tuple) -> Callable:
    import jax
    import jax.numpy as jnp

    from prunelora_keras.augment import infer_images

    try:
        key = f"{architecture_key(fmodel)}:{mean}:{std}"
    except (NotImplementedError, TypeError):
        key = f"id:{id(fmodel)}:{mean}:{std}"
    fn = _FEATURE_FNS.get(key)
    if fn is None:
        @jax.jit
        def fn(trainable, non_trainable, images):
            logits, feats = infer_images(fmodel, trainable, non_trainable, images, mean, std)
            return logits.astype(jnp.float32), feats.astype(jnp.float32)

        _FEATURE_FNS[key] = fn
    return fn


def predict_logits_and_features(model: keras.Model, x: np.ndarray, mean: Sequence[float], std: Sequence[float],
                                batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of ``model`` on uint8 images ``x``, in one pass.

    Args:
        model: a Keras model whose output layer is its classifier (see :func:`classifier_layer`).
        x: (n, h, w, c) uint8 images.
        mean, std: per-channel normalisation applied to ``x / 255`` before the model.
        batch_size: evaluation batch (the last batch is padded, then cut back; one compilation).
    Returns:
        (logits (n, classes), features (n, d)), both float32 NumPy arrays; features of a
        convolutional or token model are the classifier's input as it is (already pooled here).

    Example:
        >>> from prunelora_keras.models.vit import simple_vit
        >>> m = simple_vit(10, (8, 8, 3), 2, 16, 1, 2, 16)
        >>> z, f = predict_logits_and_features(m, np.zeros((3, 8, 8, 3), np.uint8), (0.5,) * 3, (0.25,) * 3)
        >>> z.shape, f.shape
        ((3, 10), (3, 16))
    """
    fmodel = feature_model(model)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    dim = int(np.prod(fmodel.outputs[1].shape[1:]))
    classes = int(fmodel.outputs[0].shape[-1])
    if len(x) == 0:
        return np.zeros((0, classes), np.float32), np.zeros((0, dim), np.float32)
    if keras.backend.backend() != "jax":
        m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        parts = [fmodel((x[i:i + batch_size].astype(np.float32) / 255.0 - m) / s, training=False)
                 for i in range(0, len(x), batch_size)]
        return (np.concatenate([keras.ops.convert_to_numpy(p[0]) for p in parts]).astype(np.float32),
                np.concatenate([keras.ops.convert_to_numpy(p[1]).reshape(len(p[1]), -1) for p in parts]).astype(np.float32))
    fn = _jitted(fmodel, mean, std)
    trainable = [v.value for v in fmodel.trainable_variables]
    non_trainable = [v.value for v in fmodel.non_trainable_variables]
    logits, feats = padded_batches(lambda xb: fn(trainable, non_trainable, xb), x, batch_size)
    return logits, feats.reshape(len(feats), -1)
