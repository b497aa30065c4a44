"""The airbench94 CIFAR-10 network (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"), as a Keras model.

The field's fast CIFAR-10 testbed: a 2x2 whitening convolution (3 -> 24 channels, bias, frozen
kernel), GELU, then three groups of [3x3 conv, 2x2 max-pool, BatchNorm, GELU, 3x3 conv, BatchNorm,
GELU] at widths 64/256/256, a 3x3 max-pool, and a bias-free linear head whose logits are scaled by
1/9: 118 M multiply-adds per 32x32 image. As in the original:

- convolutions have no bias; each group's convolutions start as an identity on their first
  ``in`` output channels (``torch.nn.init.dirac_``), the rest PyTorch's default uniform;
- BatchNorm has no trainable scale (``scale=False``), epsilon 1e-12 and PyTorch momentum 0.4
  (Keras 0.6);
- GELU is the exact (erf) form, and max-pools floor (31 -> 15 -> 7 -> 3 -> 1).

The whitening kernel is not learned: ``init_whitening`` sets it from the training images' 2x2 patch
covariance (its eigenvectors scaled by 1/sqrt(eigenvalue + 5e-4), each with its negation), and
``PatchWhitening`` keeps it out of the trainable variables, in a ``.keras`` file too.

The logit scale is applied to the head's *input* (``Rescaling`` before ``head``): the same logits
and gradients as scaling its output, and the head stays the model's last layer, where the
evaluation looks for the classifier. Layers are named ``whiten``, ``group{g}_conv{i}``,
``group{g}_bn{i}``, ``group{g}_pool`` and ``head``. Convolutions and pools are the package's
``FastConv2D`` and ``FastMaxPool2D``: plain Conv2D and MaxPooling2D, faster to train on XLA:CPU.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

from prunelora_keras.models.layers import FastConv2D, FastMaxPool2D

WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6  # PyTorch's 0.4: Keras keeps 0.6 of the running value per step
BN_EPSILON = 1e-12
LOGIT_SCALE = 1 / 9
WHITEN_EPS = 5e-4
WHITEN_IMAGES = 5000  # airbench estimates the patch covariance on the first 5,000 training images


@keras.saving.register_keras_serializable(package="prunelora_keras")
class PatchWhitening(FastConv2D):
    """airbench's stem: a convolution whose kernel is set from the data and never trained.

    A ``FastConv2D`` whose kernel is a non-trainable variable (saved and loaded so: the frozen flag
    is the layer's, not the file's), so every trainer, LoRA and the pruner leave it as
    ``init_whitening`` set it; its bias trains as the recipe says (``whiten_bias_epochs``).

    Example:
        >>> layer = PatchWhitening(24, 2)
        >>> layer.build((None, 32, 32, 3))
        >>> [v.name for v in layer.trainable_weights], [v.name for v in layer.non_trainable_weights]
        (['bias'], ['kernel'])
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel.trainable = False

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):  # Layer's setter makes every variable it holds trainable again: not the kernel
        keras.layers.Layer.trainable.fset(self, value)
        if getattr(self, "kernel", None) is not None:
            self.kernel.trainable = False


def whitening_kernel(images, kernel_size: int = 2, eps: float = WHITEN_EPS) -> np.ndarray:
    """airbench's whitening kernel from normalised images: the ``kernel_size``-square patches' second
    moment ``P^T P / n``, its eigenvectors in decreasing order of eigenvalue, each divided by
    sqrt(eigenvalue + eps), followed by their negations (``2 * kernel_size**2 * channels`` filters).

    Args:
        images: float images (n, height, width, channels), normalised as the model's input.
        kernel_size: the patch side.
        eps: added to each eigenvalue before the square root.
    Returns:
        The kernel, float32 of shape (k, k, channels, 2 * k * k * channels) (Keras's HWIO layout).

    Example:
        >>> k = whitening_kernel(np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype("float32"))
        >>> k.shape, bool(np.allclose(k[..., :12], -k[..., 12:]))
        ((2, 2, 3, 24), True)
    """
    n, h, w, c = np.shape(images)
    k = kernel_size
    moment, count = np.zeros((k * k * c, k * k * c)), 0
    for start in range(0, n, 256):  # in chunks: 5,000 images' patches in float64 would take 0.5 GB at once
        x = np.asarray(images[start:start + 256], np.float64)
        patches = np.stack([x[:, i:h - k + 1 + i, j:w - k + 1 + j, :] for i in range(k) for j in range(k)], axis=3)
        flat = patches.reshape(-1, k * k * c)  # (i, j, channel) order: the kernel's (h, w, in) layout
        moment += flat.T @ flat
        count += len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(moment / count)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    return np.concatenate([scaled, -scaled], axis=1).reshape(k, k, c, 2 * k * k * c).astype(np.float32)


def init_whitening(model: keras.Model, images, preprocess=None, limit: int = WHITEN_IMAGES) -> bool:
    """Set every ``PatchWhitening`` layer of ``model`` from ``limit`` of ``images``, evenly spaced over them,
    as airbench does before training; a model without one is left as it is.

    airbench takes the first 5,000 images of CIFAR-10's shuffled release; a data set stored class by
    class (an image folder) would give one class's patches, so the images are spaced over the whole
    set instead (the same as the first ones for shuffled data). The whitening layer must take the
    model's input (airbench's stem).

    Args:
        model: a Keras model.
        images: the training images as stored (uint8), or already normalised floats.
        preprocess: how stored images become the model's input (``Dataset.preprocess``); None: as they are.
        limit: how many images estimate the patch covariance (airbench: 5,000).
    Returns:
        True when a layer was set.

    Example:
        >>> model = airbench(10, widths=(8, 16, 16), seed=0)
        >>> init_whitening(model, np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype("float32"))
        True
    """
    found = False
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, PatchWhitening):
            x = np.asarray(images[np.unique(np.linspace(0, len(images) - 1, min(limit, len(images))).astype(int))])
            if preprocess is not None:
                x = np.asarray(preprocess(x))
            layer.kernel.assign(whitening_kernel(x, layer.kernel_size[0]))
            found = True
    return found


@keras.saving.register_keras_serializable(package="prunelora_keras")
class PartialDirac(keras.initializers.Initializer):
    """PyTorch's default conv init (uniform in +-1/sqrt(fan_in)) with the first ``in`` output
    channels set to an identity at the kernel's centre (``dirac_``), as airbench initialises.

    Example:
        >>> k = keras.ops.convert_to_numpy(PartialDirac(seed=0)((3, 3, 2, 4)))
        >>> k[1, 1, :, :2].tolist(), float(abs(k[..., :2]).sum())
        ([[1.0, 0.0], [0.0, 1.0]], 2.0)
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        bound = 1.0 / math.sqrt(kh * kw * cin)
        # no seed: one from numpy's global generator, which keras.utils.set_random_seed seeds (a run's seed
        # decides its model, as it does Keras's own initialisers')
        seed = self.seed if self.seed is not None else int(np.random.randint(2**31 - 1))
        kernel = np.random.default_rng(seed).uniform(-bound, bound, size=shape)
        identity = min(cin, cout)
        kernel[..., :identity] = 0.0
        kernel[kh // 2, kw // 2, np.arange(identity), np.arange(identity)] = 1.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


def _conv(x, filters: int, name: str, seed: int | None):
    return FastConv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac(seed),
                      name=name)(x)


def _bn_gelu(x, name: str, gelu_name: str):
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False, name=name)(x)
    return layers.Activation("gelu", name=gelu_name)(x)  # Keras's gelu is the exact (erf) form


def airbench(num_classes: int = 10, input_shape: tuple[int, int, int] = (32, 32, 3),
             widths: tuple[int, int, int] = WIDTHS, seed: int | None = None) -> keras.Model:
    """Build the airbench94 network (untrained; ``init_whitening`` sets the whitening kernel from data).

    Args:
        num_classes: classes of the head.
        input_shape: (height, width, channels) of the images (airbench: 32x32x3).
        widths: channels of the three groups (airbench94: 64, 256, 256).
        seed: initialisation seed of the convolutions (None: random).
    Returns:
        A functional ``keras.Model`` named ``airbench`` mapping images to logits.

    Example:
        >>> model = airbench(10, (32, 32, 3), widths=(8, 16, 16), seed=0)
        >>> model.output_shape, model.get_layer("whiten").kernel.trainable
        ((None, 10), False)
    """
    channels = input_shape[-1]
    inputs = keras.Input(input_shape, name="image")
    whiten = PatchWhitening(2 * channels * 4, 2, padding="valid", use_bias=True, bias_initializer="zeros",
                            name="whiten")  # set from the data by init_whitening, never trained
    x = layers.Activation("gelu", name="whiten_gelu")(whiten(inputs))
    for g, width in enumerate(widths, start=1):
        conv_seed = None if seed is None else seed * 10 + g
        x = _conv(x, width, f"group{g}_conv1", conv_seed)
        x = FastMaxPool2D(2, name=f"group{g}_pool")(x)
        x = _bn_gelu(x, f"group{g}_bn1", f"group{g}_gelu1")
        x = _conv(x, width, f"group{g}_conv2", None if conv_seed is None else conv_seed + 5)
        x = _bn_gelu(x, f"group{g}_bn2", f"group{g}_gelu2")
    x = FastMaxPool2D(3, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Rescaling(LOGIT_SCALE, name="logit_scale")(x)
    outputs = layers.Dense(num_classes, use_bias=False, name="head")(x)
    return keras.Model(inputs, outputs, name="airbench")
