"""Matmul-shaped layers shared by the models and the LoRA layers, written for XLA:CPU's speed.

XLA's CPU backend computes the gradients of a product ``(..., in) x (in, out)`` with more than
one leading axis markedly slower than the same product on a 2-D ``(rows, in)`` view of the
input (measured on two cores: a (32, 64, 128) x (128, 128) product's forward and backward in
5.3 ms against 3.1 ms), and the weight gradient of a 1x1 convolution about 10x slower than the
equivalent matmul. ``flat_matmul`` folds the leading axes into one; ``PointwiseConv2D`` and
``FlatDense`` use it and keep their base classes' weights and config.
"""

from __future__ import annotations

import keras
from keras import layers, ops


def flat_matmul(x, w):
    """``x @ w`` for ``x`` of any rank >= 2, computed on the 2-D (rows, in) view of ``x``."""
    if len(x.shape) == 2:
        return ops.matmul(x, w)
    lead = ops.shape(x)[:-1]
    y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), w)
    return ops.reshape(y, (*lead, w.shape[-1]))


@keras.saving.register_keras_serializable(package="prunelora_keras")
class FlatDense(layers.Dense):
    """A Dense layer whose product runs on the 2-D view of its input (``flat_matmul``).

    Same weights, outputs and config as ``Dense``; for token inputs (batch, tokens, features)
    as in the ViT, its training step is faster on XLA:CPU. LoRA, pruning and weight import treat
    it as the Dense it is.
    """

    def call(self, inputs, training=None):
        if len(inputs.shape) <= 2 or self.lora_enabled or self.quantization_mode is not None:
            return super().call(inputs, training=training)
        y = flat_matmul(inputs, self.kernel)
        if self.bias is not None:
            y = ops.add(y, self.bias)
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable(package="prunelora_keras")
class PointwiseConv2D(layers.Conv2D):
    """A 1x1 Conv2D computed as a matrix product over channels (strides by slicing).

    Same weights, outputs and config as ``Conv2D(kernel_size=1)`` (it *is* a Conv2D, so LoRA,
    pruning and weight import treat it as one). It exists for speed: XLA's CPU backend computes
    the weight gradient of a 1x1 convolution about 10x slower than the equivalent matmul
    (measured: 315 ms vs 36 ms for 128x32x32x16 -> 64 on two cores).
    """

    def convolution_op(self, inputs, kernel):
        return pointwise_as_matmul(self, inputs, kernel, super().convolution_op)


def pointwise_as_matmul(layer: layers.Conv2D, inputs, kernel, conv):
    """``conv(inputs, kernel)``, computed as a matmul when ``layer`` is a plain 1x1 convolution.

    The kernel may have any number of output channels (a LoRA adapter's A has ``rank``).
    """
    if (layer.kernel_size != (1, 1) or layer.dilation_rate != (1, 1) or layer.groups != 1
            or layer.data_format != "channels_last"):
        return conv(inputs, kernel)
    sh, sw = layer.strides
    if (sh, sw) != (1, 1):
        inputs = inputs[:, ::sh, ::sw, :]
    return flat_matmul(inputs, ops.reshape(kernel, kernel.shape[2:]))
