"""SimpleViT (Beyer et al. 2022, big_vision) as the paper's reference builds it, in functional Keras.

Patch embedding is a Conv2D with kernel = stride = patch, a fixed 2-D sin-cos position
embedding is added, then ``depth`` pre-LayerNorm blocks (eps 1e-6), global average pooling over
tokens, a final LayerNorm and a zero-initialised Dense head. No class token, no dropout.

Attention is laid out like torch's ``nn.MultiheadAttention``: one fused Dense ``block{i}_attn_qkv``
(width -> 3 * width, columns ordered q | k | v, each split into heads of width/heads features),
a parameter-free ``DotProductAttention`` layer, and one Dense ``block{i}_attn_out``. With this
layout LoRA, head pruning and PyTorch weight import map one to one. Blocks count from 0, as
the indices of torch's ``nn.ModuleList`` do (``block11_attn_out`` is the last of 12).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from prunelora_keras.models.layers import FlatDense


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """big_vision's fixed position embedding, shape (h * w, dim): [sin x, cos x, sin y, cos y]."""
    if dim % 4:
        raise ValueError(f"dim {dim} must be divisible by 4 for the 2-D sin-cos embedding")
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    omega = np.arange(dim // 4) / max(dim // 4 - 1, 1)
    omega = 1.0 / temperature**omega
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="prunelora_keras")
class AddPositionEmbedding(layers.Layer):
    """Adds the fixed sin-cos embedding to (batch, tokens, dim) tokens laid out as an h x w grid."""

    def __init__(self, grid: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.grid = tuple(grid)

    def call(self, tokens):
        pe = posemb_sincos_2d(self.grid[0], self.grid[1], tokens.shape[-1])
        return tokens + ops.cast(ops.convert_to_tensor(pe), tokens.dtype)[None]

    def get_config(self):
        return {**super().get_config(), "grid": list(self.grid)}


@keras.saving.register_keras_serializable(package="prunelora_keras")
class DotProductAttention(layers.Layer):
    """Multi-head scaled dot-product attention on a fused (batch, tokens, 3 * dim) qkv tensor.

    Holds no weights: projections live in the surrounding Dense layers, so they can be adapted
    and pruned like any other Dense.
    """

    def __init__(self, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def call(self, qkv):
        batch, tokens, dim3 = ops.shape(qkv)[0], qkv.shape[1], qkv.shape[2]
        dim = dim3 // 3
        head_dim = dim // self.num_heads
        qkv = ops.reshape(qkv, (batch, tokens, 3, self.num_heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (batch, tokens, heads, head_dim)
        scores = ops.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        weights = ops.softmax(scores, axis=-1)
        out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
        return ops.reshape(out, (batch, tokens, dim))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 3)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="prunelora_keras")
def gelu_exact(x):
    """GELU with the exact erf form, as torch's nn.GELU() default (Keras's default is tanh-approximate)."""
    return keras.activations.gelu(x, approximate=False)


def simple_vit(num_classes: int = 10, input_shape: tuple[int, int, int] = (32, 32, 3), patch_size: int = 4,
               dim: int = 384, depth: int = 12, heads: int = 6, mlp_dim: int = 1536, name: str = "vit") -> keras.Model:
    """Build a SimpleViT. The paper's size (the defaults) has 21,317,002 parameters."""
    h, w = input_shape[0], input_shape[1]
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch size {patch_size} must divide the image size {h}x{w}")
    if dim % heads:
        raise ValueError(f"dim {dim} must be divisible by heads {heads}")
    grid = (h // patch_size, w // patch_size)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(dim, patch_size, strides=patch_size, padding="valid", name="patch_embed")(inputs)
    x = layers.Reshape((grid[0] * grid[1], dim), name="tokens")(x)
    x = AddPositionEmbedding(grid, name="posemb")(x)
    for i in range(depth):
        p = f"block{i}"
        y = layers.LayerNormalization(epsilon=1e-6, name=f"{p}_ln1")(x)
        y = FlatDense(3 * dim, name=f"{p}_attn_qkv")(y)
        y = DotProductAttention(heads, name=f"{p}_attn")(y)
        y = FlatDense(dim, name=f"{p}_attn_out")(y)
        x = layers.Add(name=f"{p}_attn_residual")([x, y])
        y = layers.LayerNormalization(epsilon=1e-6, name=f"{p}_ln2")(x)
        y = FlatDense(mlp_dim, activation=gelu_exact, name=f"{p}_mlp_fc1")(y)
        y = FlatDense(dim, name=f"{p}_mlp_fc2")(y)
        x = layers.Add(name=f"{p}_mlp_residual")([x, y])
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    outputs = layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros", name="head")(x)
    return keras.Model(inputs, outputs, name=name)
