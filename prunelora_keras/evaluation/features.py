"""Penultimate features: the input of a model's classifier layer, computed with its logits in one pass.

The representation metrics (``representation.py``) need each evaluated model's features on the
same images whose logits the output metrics use; ``predict_logits_and_features`` returns both
from one compiled forward pass, so the features cost no second pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from prunelora_keras.data.augment import Preprocess, infer_images

from prunelora_keras.training.inference import cached_jit, on_evaluation_devices, padded_batches



def classifier_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces ``model``'s logits: the last layer with a kernel (Dense, a 1x1 Conv2D),
    reached from the output through layers that only reshape (Flatten, Reshape, a linear Activation).

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
    # Walk back through layers that only reshape (keras.applications' MobileNets end Conv2D "Logits" ->
    # Flatten -> Activation(None)): the classifier is the first layer with a kernel.
    while not hasattr(layer, "kernel") and isinstance(layer, _PASS_THROUGH) and activation_name(layer) is None:
        layer = layer.input._keras_history.operation
    if not hasattr(layer, "kernel"):
        raise ValueError(f"{model.name}'s output comes from {layer.name} ({type(layer).__name__}), not from a layer "
                         "with a kernel: end the model with its classifier's logits (keras.applications: "
                         "classifier_activation=None)")
    if getattr(getattr(layer, "activation", None), "__name__", "linear") != "linear":
        raise ValueError(f"{model.name}'s classifier {layer.name} applies {layer.activation.__name__}: its output is not "
                         "logits; rebuild the head with no activation (keras.applications: classifier_activation=None)")
    return layer


# Layers that only reshape or pass logits on: the walks from the output look through them.
_PASS_THROUGH = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Activation, keras.layers.Dropout,
                 keras.layers.Identity)
_ACTIVATION_LAYERS = (keras.layers.Softmax, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                      keras.layers.PReLU)


def activation_name(layer) -> str | None:
    """The name of ``layer``'s non-linear activation, or None when it leaves its input linear."""
    if isinstance(layer, _ACTIVATION_LAYERS):
        return type(layer).__name__.lower()
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", type(activation).__name__)
    return None if name == "linear" else name


def output_activation(model: keras.Model) -> tuple[str, str] | None:
    """(layer name, activation) of the first non-linear activation on the path from ``model``'s
    output back to its classifier (through Flatten, Reshape, Dropout, Identity, Activation), or None.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="out")])
        >>> output_activation(m)
        ('out', 'softmax')
    """
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        raise ValueError(f"{model.name} has {len(outputs)} outputs: pass a functional or Sequential classifier with "
                         "one output (its logits)")
    layer = outputs[0]._keras_history.operation
    while True:
        name = activation_name(layer)
        if name is not None:
            return layer.name, name
        if not isinstance(layer, _PASS_THROUGH):
            return None
        layer = layer.input._keras_history.operation


def feature_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers that returns (logits, penultimate features)."""
    head = classifier_layer(model)
    return keras.Model(model.inputs, [model.outputs[0], head.input], name=f"{model.name}_with_features")


def _jitted(fmodel: keras.Model, preprocess: Preprocess) -> Callable:
    import jax.numpy as jnp

    def fn(trainable, non_trainable, images):
        logits, feats = infer_images(fmodel, trainable, non_trainable, images, preprocess)
        return logits.astype(jnp.float32), feats.astype(jnp.float32)

    return cached_jit("features", fmodel, fn, preprocess)


def predict_logits_and_features(model: keras.Model, x: np.ndarray, preprocess: Preprocess,
                                batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of ``model`` on uint8 images ``x``, in one pass.

    Args:
        model: a Keras model whose output layer is its classifier (see :func:`classifier_layer`).
        x: (n, h, w, c) uint8 images.
        preprocess: how ``x`` becomes the model's input (``Dataset.preprocess``).
        batch_size: evaluation batch (the last batch is padded, then cut back; one compilation).
    Returns:
        (logits (n, classes), features (n, d)), both float32 NumPy arrays; features of a
        convolutional or token model are the classifier's input as it is (already pooled here).

    Example:
        >>> from prunelora_keras.models.vit import simple_vit
        >>> m = simple_vit(10, (8, 8, 3), 2, 16, 1, 2, 16)
        >>> z, f = predict_logits_and_features(m, np.zeros((3, 8, 8, 3), np.uint8), Preprocess())
        >>> z.shape, f.shape
        ((3, 10), (3, 16))
    """
    fmodel = feature_model(model)
    dim = int(np.prod(fmodel.outputs[1].shape[1:]))
    classes = int(fmodel.outputs[0].shape[-1])
    if len(x) == 0:
        return np.zeros((0, classes), np.float32), np.zeros((0, dim), np.float32)
    if keras.backend.backend() != "jax":
        parts = [fmodel(np.asarray(preprocess(x[i:i + batch_size])), training=False)
                 for i in range(0, len(x), batch_size)]
        return (np.concatenate([keras.ops.convert_to_numpy(p[0]) for p in parts]).astype(np.float32),
                np.concatenate([keras.ops.convert_to_numpy(p[1]).reshape(len(p[1]), -1) for p in parts]).astype(np.float32))
    fn = _jitted(fmodel, preprocess)
    trainable = [v.value for v in fmodel.trainable_variables]
    non_trainable = [v.value for v in fmodel.non_trainable_variables]
    trainable, non_trainable = on_evaluation_devices((trainable, non_trainable))
    logits, feats = padded_batches(lambda xb: fn(trainable, non_trainable, xb), x, batch_size)
    return logits, feats.reshape(len(feats), -1)
