"""LoRA adapters for Dense and Conv2D, model surgery by layer-name pattern, and merging.

Semantics are peft's (Hu et al. 2022, as the paper's reference uses them):

    y = base(x) + (alpha / rank) * B(A(dropout(x)))

with A: in -> rank and B: rank -> out, no biases, A initialised Kaiming-uniform with a = sqrt(5)
(uniform in +-1/sqrt(fan_in)) and B zeros, so a freshly wrapped model computes exactly what the
base model did. For a Conv2D, A is a convolution with the base's kernel size, strides, padding
and dilation into ``rank`` channels and B a 1x1 convolution to the output channels.

Why not Keras's own ``enable_lora``: it has no dropout, initialises A with he_uniform, leaves the
bias trainable and saves only the merged kernel, so a reloaded model cannot keep training its
adapter. These layers save A, B and the frozen base separately in ``.keras`` files.

Structured pruning composes with LoRA: ``unit_mask`` (output units) and ``input_mask`` (input
features) gate the adapter's update, so a pruned unit stays zero however B and A train, and
``merge`` keeps the zeros.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from prunelora_keras.models.layers import FastConv2D, FastDepthwiseConv2D, FastMaxPool2D, FlatDense, flat_matmul

LORA_KEYS = ("adapter_rank", "adapter_alpha", "adapter_dropout", "adapter_seed")


def _kaiming_uniform_a_sqrt5(fan_in: int, seed: int | None):
    """torch's default (and peft's lora_A) init: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)


class _LoRAMixin:
    """Shared state of the two adapter layers: configuration, masks, dropout, freezing the base."""

    def _init_lora(self, rank: int, alpha: float, dropout: float, seed: int | None):
        # Attribute and config names avoid Keras's own `rank` (BaseConv) and `lora_rank` (Dense).
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.adapter_rank, self.adapter_alpha = int(rank), float(alpha)
        self.adapter_dropout, self.adapter_seed = float(dropout), seed
        self.scale = self.adapter_alpha / self.adapter_rank
        # same dtype policy as the wrapped layer, so a bfloat16 adapter stays bfloat16 through dropout
        self.dropout_layer = layers.Dropout(dropout, seed=seed, name="lora_dropout", dtype=self.dtype_policy)

    def _freeze_base_and_add_masks(self, in_features: int, out_features: int):
        self.kernel.trainable = False
        if self.bias is not None:
            self.bias.trainable = False
        self.unit_mask = self.add_weight(name="lora_unit_mask", shape=(out_features,), initializer="ones",
                                         trainable=False)
        self.input_mask = self.add_weight(name="lora_input_mask", shape=(in_features,), initializer="ones",
                                          trainable=False)

    def _lora_config(self) -> dict:
        return {"adapter_rank": self.adapter_rank, "adapter_alpha": self.adapter_alpha,
                "adapter_dropout": self.adapter_dropout, "adapter_seed": self.adapter_seed}

    # Dense and Conv2D save only kernel and bias; the adapter and its masks must travel too.
    def save_own_variables(self, store):
        layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        layers.Layer.load_own_variables(self, store)

    @property
    def adapter_variables(self) -> list:
        return [self.lora_a, self.lora_b]

    def merged_kernel_numpy(self) -> np.ndarray:
        """``merged_kernel()`` computed on the host, in the kernel's dtype: merging a model's adapters
        eagerly through ``keras.ops`` compiles a program per layer shape on JAX (a MobileNetV3: 208,
        about 6 s); numpy compiles none. The same sums, to float rounding.

        Returns:
            the merged (kernel-shaped) weights as a numpy array, in the kernel's dtype.

        Example:
            >>> adapted.get_layer("a").merged_kernel_numpy().shape  # doctest: +SKIP
            (4, 3)
        """
        value = lambda v: np.asarray(ops.convert_to_numpy(v), np.float32)  # noqa: E731
        a, b = value(self.lora_a), value(self.lora_b)
        delta = (np.einsum("hwir,ro->hwio", a, b.reshape(self.adapter_rank, -1)) if a.ndim == 4 else a @ b)
        mask = np.multiply.outer(value(self.input_mask), value(self.unit_mask))  # (in, out)
        merged = value(self.kernel) + np.float32(self.scale) * (delta * mask)
        return merged.astype(ops.convert_to_numpy(self.kernel).dtype)

    def _finish(self, y):
        if self.bias is not None:
            y = ops.add(y, self.bias)
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable(package="prunelora_keras")
class LoRADense(_LoRAMixin, FlatDense):
    """A Dense layer with a frozen kernel and bias and a trainable low-rank adapter (A, B)."""

    def __init__(self, units, adapter_rank: int = 8, adapter_alpha: float = 16.0, adapter_dropout: float = 0.0,
                 adapter_seed: int | None = None, **kwargs):
        super().__init__(units, **kwargs)
        self._init_lora(adapter_rank, adapter_alpha, adapter_dropout, adapter_seed)

    def build(self, input_shape):
        super().build(input_shape)
        in_features = int(input_shape[-1])
        self.lora_a = self.add_weight(name="lora_a", shape=(in_features, self.adapter_rank),
                                      initializer=_kaiming_uniform_a_sqrt5(in_features, self.adapter_seed))
        self.lora_b = self.add_weight(name="lora_b", shape=(self.adapter_rank, self.units), initializer="zeros")
        self._freeze_base_and_add_masks(in_features, self.units)

    def call(self, inputs, training=None):
        y = flat_matmul(inputs, self.kernel)
        h = self.dropout_layer(inputs, training=training) * self.input_mask
        delta = flat_matmul(flat_matmul(h, self.lora_a), self.lora_b)
        return self._finish(y + self.scale * delta * self.unit_mask)

    def merged_kernel(self):
        delta = ops.matmul(self.lora_a, self.lora_b)
        delta = delta * self.input_mask[:, None] * self.unit_mask[None, :]
        return self.kernel + self.scale * delta

    def get_config(self):
        return {**super().get_config(), **self._lora_config()}


@keras.saving.register_keras_serializable(package="prunelora_keras")
class LoRAConv2D(_LoRAMixin, FastConv2D):
    """A Conv2D (channels_last) with a frozen kernel and bias and a trainable adapter.

    A is a convolution like the base (kernel size, strides, padding, dilation) into ``rank``
    channels; B is a 1x1 convolution, computed as a matmul over channels.
    """

    def __init__(self, filters, kernel_size, adapter_rank: int = 8, adapter_alpha: float = 16.0,
                 adapter_dropout: float = 0.0, adapter_seed: int | None = None, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last" or self.groups != 1:
            raise ValueError("LoRAConv2D supports channels_last, ungrouped convolutions")
        self._init_lora(adapter_rank, adapter_alpha, adapter_dropout, adapter_seed)

    def build(self, input_shape):
        super().build(input_shape)
        in_ch = int(input_shape[-1])
        kh, kw = self.kernel_size
        self.lora_a = self.add_weight(name="lora_a", shape=(kh, kw, in_ch, self.adapter_rank),
                                      initializer=_kaiming_uniform_a_sqrt5(in_ch * kh * kw, self.adapter_seed))
        self.lora_b = self.add_weight(name="lora_b", shape=(1, 1, self.adapter_rank, self.filters), initializer="zeros")
        self._freeze_base_and_add_masks(in_ch, self.filters)

    def call(self, inputs, training=None):
        y = self.convolution_op(inputs, self.kernel)
        h = self.dropout_layer(inputs, training=training) * self.input_mask
        low = self.convolution_op(h, self.lora_a)  # the base's geometry and its fast form (1x1: a matmul)
        delta = flat_matmul(low, ops.reshape(self.lora_b, (self.adapter_rank, self.filters)))
        return self._finish(y + self.scale * delta * self.unit_mask)

    def merged_kernel(self):
        b = ops.reshape(self.lora_b, (self.adapter_rank, self.filters))
        delta = ops.einsum("hwir,ro->hwio", self.lora_a, b)
        delta = delta * self.input_mask[None, None, :, None] * self.unit_mask[None, None, None, :]
        return self.kernel + self.scale * delta

    def get_config(self):
        return {**super().get_config(), **self._lora_config()}


LORA_LAYERS = (LoRADense, LoRAConv2D)


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether a layer name fully matches one of the regular expressions (peft's ``target_modules``
    style); the one name matcher behind LoRA targets, pruning targets and sparsity reports."""
    return any(re.fullmatch(p, name) for p in patterns)


def _clone(model: keras.Model, replace) -> keras.Model:
    """Clone a functional model, replacing layers by ``replace(layer) -> new layer or None``."""

    def clone_function(layer):
        new = replace(layer)
        return new if new is not None else layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_function)
    return clone


def _copy_weights(src: keras.Model, dst: keras.Model) -> None:
    """Copy every weight by layer name; adapter layers receive their base kernel and bias.

    Values go through the host, so ``dst`` owns new buffers: assigning ``src``'s variable would share
    its array, and Keras's ``fit``/``predict`` on JAX donate their variables' buffers, so training the
    copy would delete the weights of the model it came from."""
    own = keras.ops.convert_to_numpy
    for layer in dst.layers:
        if not layer.weights:
            continue
        old = src.get_layer(layer.name)
        if isinstance(layer, LORA_LAYERS) and not isinstance(old, LORA_LAYERS):
            layer.kernel.assign(own(old.kernel))
            if layer.bias is not None:
                layer.bias.assign(own(old.bias))
        elif not isinstance(layer, LORA_LAYERS) and isinstance(old, LORA_LAYERS):
            layer.kernel.assign(old.merged_kernel_numpy())
            if layer.bias is not None:
                layer.bias.assign(own(old.bias))
        else:
            layer.set_weights(old.get_weights())


def replace_layers(model: keras.Model, replace) -> keras.Model:
    """A copy of a functional ``model`` with layers swapped by ``replace(layer) -> new layer or None``.

    Weights are copied by layer name (adapter layers get their base kernel and bias; a plain
    layer replacing an adapter gets the merged kernel). The one model-surgery mechanism behind
    ``add_lora``, ``merge``, dtype-policy changes and ``FlatDense`` conversion.
    """
    copy = _clone(model, replace)
    _copy_weights(model, copy)
    return copy


def with_fast_layers(model: keras.Model) -> keras.Model:
    """``model`` with its plain layers as the package's faster equivalents: every ``Dense`` on token
    inputs (rank >= 3) a ``FlatDense``, every ``Conv2D`` a ``FastConv2D``, every ``DepthwiseConv2D``
    a ``FastDepthwiseConv2D``, every ``MaxPooling2D`` a ``FastMaxPool2D`` (exact types only: a user's
    subclass is left as it is).

    The package's models already use them; checkpoints from before (plain layers) and a user's own
    models train slower on XLA:CPU without them. Same weights, config and outputs.

    Args:
        model: a functional or Sequential Keras model.
    Returns:
        a converted copy (weights copied by layer name), or ``model`` itself when nothing changes.

    Example:
        >>> m = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="c"), layers.MaxPooling2D(2)])
        >>> [type(layer).__name__ for layer in with_fast_layers(m).layers]
        ['FastConv2D', 'FastMaxPool2D']
    """

    def faster(layer):
        kind = type(layer)
        if kind is layers.Dense and len(layer.input.shape) >= 3:
            return FlatDense
        return {layers.Conv2D: FastConv2D, layers.DepthwiseConv2D: FastDepthwiseConv2D,
                layers.MaxPooling2D: FastMaxPool2D}.get(kind)

    if not any(faster(layer) for layer in model.layers):
        return model
    return replace_layers(model, lambda layer: faster(layer).from_config(layer.get_config()) if faster(layer) else None)


def adapter_seed(seed: int | None, layer_name: str) -> int | None:
    """The initialisation (and dropout) seed of the adapter on ``layer_name`` for a run seeded ``seed``.

    A hash of both, so no two (seed, layer) pairs share an initialisation: with ``seed + layer
    index`` (the earlier rule) seed s's adapter on layer i+1 equalled seed s+1's on layer i, and runs
    over several seeds were correlated.

    Example:
        >>> adapter_seed(0, "head") == adapter_seed(1, "head"), adapter_seed(0, "head") == adapter_seed(0, "head")
        (False, True)
    """
    if seed is None:
        return None
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}:{layer_name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def add_lora(model: keras.Model, targets: Sequence[str], rank: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, modules_to_save: Sequence[str] = (), seed: int | None = None
             ) -> tuple[keras.Model, list]:
    """Wrap every Dense/Conv2D whose name fully matches a pattern in ``targets`` with a LoRA adapter.

    Returns a new model; ``model`` is not changed.

    Args:
        model: a functional or Sequential Keras model.
        targets: regular expressions over layer names (peft's ``target_modules``).
        rank, alpha, dropout: the adapters' rank, scale numerator (scale = alpha / rank) and the
            dropout on their input.
        modules_to_save: patterns of layers trained in full beside the adapters (peft's name).
        seed: adapter initialisation, hashed with each layer's name.
    Returns:
        (the new model: base weights copied, adapters fresh, so its outputs equal ``model``'s;
        the variables to train: every adapter's A and B and the ``modules_to_save`` layers' weights).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="a"), keras.layers.Dense(2, name="b")])
        >>> adapted, train_vars = add_lora(m, ["a"], rank=2, alpha=4, modules_to_save=["b"])
        >>> sorted("/".join(v.path.split("/")[-2:]) for v in train_vars)
        ['a/lora_a', 'a/lora_b', 'b/bias', 'b/kernel']
    """
    matched: list[str] = []

    def replace(layer):
        if not matches_any(layer.name, targets) or isinstance(layer, LORA_LAYERS):
            return None
        cfg = layer.get_config()
        lora = {"adapter_rank": rank, "adapter_alpha": alpha, "adapter_dropout": dropout,
                "adapter_seed": adapter_seed(seed, layer.name)}
        if isinstance(layer, layers.Conv2D):
            if layer.data_format != "channels_last" or layer.groups != 1:
                raise ValueError(f"LoRA supports channels_last ungrouped Conv2D only; {layer.name} is not")
            cfg.pop("kernel_size")
            cfg.pop("filters")
            new = LoRAConv2D(layer.filters, layer.kernel_size, **lora, **cfg)
        elif isinstance(layer, layers.Dense):
            cfg.pop("units")
            cfg.pop("lora_rank", None)
            cfg.pop("lora_alpha", None)
            new = LoRADense(layer.units, **lora, **cfg)
        else:
            return None
        matched.append(layer.name)
        return new

    new_model = replace_layers(model, replace)
    if not matched:
        raise ValueError(f"no Dense or Conv2D layer name matches the LoRA targets {list(targets)}")
    train_vars = []
    for layer in new_model.layers:
        if isinstance(layer, LORA_LAYERS):
            train_vars += layer.adapter_variables
        elif matches_any(layer.name, modules_to_save):
            train_vars += list(layer.trainable_weights)
    return new_model, train_vars


def lora_layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, LORA_LAYERS)]


def merge(model: keras.Model) -> keras.Model:
    """A plain model (Dense / Conv2D only) computing what the adapted model computes in inference.

    Each adapter is folded into its base kernel: W + (alpha / rank) * B.A, gated by the masks.
    The adapted model is left untouched, so it can keep training (peft's ``unmerge``).

    Args:
        model: a model with LoRA layers (``add_lora``).
    Returns:
        a new model without adapters, same outputs in inference.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")])
        >>> adapted, _ = add_lora(m, ["a"], rank=2, alpha=4)
        >>> plain = merge(adapted)
        >>> type(plain.get_layer("a")).__name__, np.allclose(plain(np.ones((1, 4))), adapted(np.ones((1, 4))))
        ('FlatDense', True)
    """

    def replace(layer):
        if not isinstance(layer, LORA_LAYERS):
            return None
        cfg = {k: v for k, v in layer.get_config().items() if k not in LORA_KEYS}
        if isinstance(layer, LoRAConv2D):
            return FastConv2D(**cfg)
        return FlatDense(**cfg)

    return replace_layers(model, replace)


def count_params(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))
