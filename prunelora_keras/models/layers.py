"""Layers shared by the models and the LoRA layers, written for XLA:CPU's speed.

XLA's CPU backend computes the gradients of a product ``(..., in) x (in, out)`` with more than
one leading axis markedly slower than the same product on a 2-D ``(rows, in)`` view of the
input (measured on two cores: a (32, 64, 128) x (128, 128) product's forward and backward in
5.3 ms against 3.1 ms), the weight gradient of a 1x1 convolution about 10x slower than the
equivalent matmul, a wide 3x3 convolution's weight gradient 1.7-2x slower than one matmul per
kernel tap, and a max-pool's gradient by select-and-scatter. ``flat_matmul`` folds the leading
axes into one; ``FlatDense``, ``FastConv2D`` and ``FastMaxPool2D`` use these forms (the last two
only on JAX's CPU platform, through ``models.cpu_ops``) and keep their base classes' weights and
config, so LoRA, pruning and weight import treat them as the Dense, Conv2D and MaxPooling2D they are.
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
class FastConv2D(layers.Conv2D):
    """A Conv2D that trains in XLA:CPU's fastest exact forms; elsewhere exactly ``Conv2D``.

    Same weights, outputs and config as ``Conv2D`` (it *is* one). A 1x1 convolution is a matrix
    product over channels on every backend (strides by slicing): XLA:CPU's 1x1 weight gradient is
    about 10x the matmul's (315 ms vs 36 ms for 128x32x32x16 -> 64 on two cores). A larger kernel,
    on JAX's CPU platform, takes the forms ``cpu_ops.conv_forms`` picks for its shapes: the weight
    gradient as one matmul per kernel tap when wide enough, the forward as one im2col matmul when
    a window holds few values (``cpu_ops.conv2d``); lax's input gradient. Outputs and gradients
    equal ``Conv2D``'s to float rounding.

    Example:
        >>> import numpy as np
        >>> layer = FastConv2D(4, 3, padding="same")
        >>> layer(np.ones((2, 8, 8, 3), "float32")).shape
        (2, 8, 8, 4)
    """

    def convolution_op(self, inputs, kernel):
        return fast_convolution(self, inputs, kernel, super().convolution_op)


@keras.saving.register_keras_serializable(package="prunelora_keras")
class PointwiseConv2D(FastConv2D):
    """``FastConv2D`` under the name models saved before it carried: such files load unchanged."""


def fast_convolution(layer: layers.Conv2D, inputs, kernel, conv):
    """``conv(inputs, kernel)`` (the layer's own convolution) in the fastest exact form for ``layer``.

    The kernel may have any number of output channels (a LoRA adapter's A has ``rank``).
    """
    plain = layer.dilation_rate == (1, 1) and layer.groups == 1 and layer.data_format == "channels_last"
    if plain and tuple(layer.kernel_size) == (1, 1):
        sh, sw = layer.strides
        if (sh, sw) != (1, 1):
            inputs = inputs[:, ::sh, ::sw, :]
        return flat_matmul(inputs, ops.reshape(kernel, kernel.shape[2:]))
    if plain and layer.padding in ("same", "valid"):
        from prunelora_keras.models import cpu_ops

        if cpu_ops.on_jax_cpu("conv"):
            forms = cpu_ops.conv_forms(inputs.shape, kernel.shape, layer.strides, dtype=inputs.dtype)
            if forms != ("lax", "lax"):
                return cpu_ops.conv2d(inputs, ops.convert_to_tensor(kernel), layer.strides, layer.padding, forms)
    return conv(inputs, kernel)


@keras.saving.register_keras_serializable(package="prunelora_keras")
class FastDepthwiseConv2D(layers.DepthwiseConv2D):
    """A DepthwiseConv2D that trains 12-60x faster on XLA:CPU; elsewhere exactly ``DepthwiseConv2D``.

    On JAX's CPU platform (channels_last, no dilation) the convolution is ``cpu_ops.depthwise_conv2d``,
    a sum of shifted products that XLA fuses, instead of lax's grouped convolution, which XLA:CPU runs
    at a small fraction of its speed (MobileNets and EfficientNets are mostly these layers). Same
    weights, config and outputs (to float rounding) as ``DepthwiseConv2D``.

    Example:
        >>> import numpy as np
        >>> FastDepthwiseConv2D(3, padding="same")(np.ones((2, 8, 8, 4), "float32")).shape
        (2, 8, 8, 4)
    """

    def call(self, inputs):
        from prunelora_keras.models import cpu_ops

        if (self.data_format != "channels_last" or tuple(self.dilation_rate) != (1, 1)
                or not cpu_ops.on_jax_cpu("conv")):
            return super().call(inputs)
        y = cpu_ops.depthwise_conv2d(inputs, ops.convert_to_tensor(self.kernel), self.strides, self.padding)
        if self.use_bias:
            y = ops.add(y, self.bias)
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable(package="prunelora_keras")
class FastMaxPool2D(layers.MaxPooling2D):
    """A MaxPooling2D whose gradient on JAX's CPU platform avoids select-and-scatter.

    With non-overlapping windows (strides = pool size), valid padding and channels_last, it runs
    ``cpu_ops.max_pool``: a reshape and a max, and a gradient that goes to each window's first
    maximum (as select-and-scatter's does) by elementwise masks. Elsewhere it is ``MaxPooling2D``.

    Example:
        >>> import numpy as np
        >>> FastMaxPool2D(2)(np.ones((1, 5, 5, 3), "float32")).shape
        (1, 2, 2, 3)
    """

    def call(self, inputs):
        if (tuple(self.strides) == tuple(self.pool_size) and self.padding == "valid"
                and self.data_format == "channels_last"):
            from prunelora_keras.models import cpu_ops

            if cpu_ops.on_jax_cpu("max_pool"):
                return cpu_ops.max_pool(inputs, self.pool_size)
        return super().call(inputs)

