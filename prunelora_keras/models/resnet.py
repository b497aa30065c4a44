"""The CIFAR ResNet of the paper's reference (BasicBlock and Bottleneck), as a functional Keras model.

CIFAR variant: 3x3 stride-1 stem, no max-pool, four stages with strides 1/2/2/2 (stride on the
3x3 conv), projection shortcut (1x1 conv + BN) when the shape changes, global average pool,
one Dense head. Layers are named ``stem_conv``, ``stage{s}_block{b}_conv{i}``,
``stage{s}_block{b}_bn{i}``, ``stage{s}_block{b}_shortcut_conv`` and ``head`` (stages and blocks
count from 1), because LoRA and pruning find layers by these names.

Strided 3x3 convs get an explicit symmetric ``ZeroPadding2D(1)`` and ``padding="valid"``, which
is exactly PyTorch's ``padding=1``; Keras's "same" would pad only the bottom/right and shift the
sampling grid. BatchNorm uses PyTorch's momentum (0.1 -> Keras 0.9) and epsilon (1e-5).
"""

from __future__ import annotations

import keras
from keras import layers

from prunelora_keras.models.layers import FastConv2D

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    if kernel == 3 and stride != 1:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same" if kernel > 1 else "valid"
    return FastConv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                    kernel_initializer="he_normal", name=name)(x)


def _bn(x, name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def _shortcut(x, filters: int, stride: int, prefix: str):
    if stride == 1 and x.shape[-1] == filters:
        return x
    s = _conv(x, filters, 1, stride, f"{prefix}_shortcut_conv")
    return _bn(s, f"{prefix}_shortcut_bn")


def basic_block(x, planes: int, stride: int, prefix: str):
    """Two 3x3 convs (expansion 1)."""
    shortcut = _shortcut(x, planes, stride, prefix)
    y = layers.ReLU(name=f"{prefix}_relu1")(_bn(_conv(x, planes, 3, stride, f"{prefix}_conv1"), f"{prefix}_bn1"))
    y = _bn(_conv(y, planes, 3, 1, f"{prefix}_conv2"), f"{prefix}_bn2")
    return layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_add")([y, shortcut]))


def bottleneck_block(x, planes: int, stride: int, prefix: str):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * planes."""
    shortcut = _shortcut(x, planes * 4, stride, prefix)
    y = layers.ReLU(name=f"{prefix}_relu1")(_bn(_conv(x, planes, 1, 1, f"{prefix}_conv1"), f"{prefix}_bn1"))
    y = layers.ReLU(name=f"{prefix}_relu2")(_bn(_conv(y, planes, 3, stride, f"{prefix}_conv2"), f"{prefix}_bn2"))
    y = _bn(_conv(y, planes * 4, 1, 1, f"{prefix}_conv3"), f"{prefix}_bn3")
    return layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_add")([y, shortcut]))


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def cifar_resnet(block: str, stage_blocks: tuple[int, ...], num_classes: int = 10,
                 input_shape: tuple[int, int, int] = (32, 32, 3), width: float = 1.0,
                 name: str = "resnet") -> keras.Model:
    """Build a CIFAR ResNet. ``width`` scales every channel count (0.25 -> 16/32/64/128 planes)."""
    planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
    inputs = keras.Input(input_shape, name="image")
    x = layers.ReLU(name="stem_relu")(_bn(_conv(inputs, planes[0], 3, 1, "stem_conv"), "stem_bn"))
    for s, (n_blocks, p) in enumerate(zip(stage_blocks, planes), start=1):
        for b in range(1, n_blocks + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = BLOCKS[block](x, p, stride, f"stage{s}_block{b}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet18(num_classes: int = 10, input_shape=(32, 32, 3), width: float = 1.0) -> keras.Model:
    return cifar_resnet("basic", (2, 2, 2, 2), num_classes, input_shape, width, name="resnet18")


def resnet50(num_classes: int = 10, input_shape=(32, 32, 3), width: float = 1.0) -> keras.Model:
    return cifar_resnet("bottleneck", (3, 4, 6, 3), num_classes, input_shape, width, name="resnet50")
