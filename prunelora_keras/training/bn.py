"""The BatchNorm policy of a recipe, decided once before the training step is built."""

from __future__ import annotations

import keras

__all__ = ["set_bn_policy"]


def set_bn_policy(model: keras.Model, policy: str) -> None:
    """Set how ``model``'s BatchNormalization layers behave in training (in place).

    Args:
        model: any Keras model; its BatchNormalization layers (nested ones included) change.
        policy: ``"update"``: batch statistics in training and running statistics updated, as
            PyTorch's train mode (gamma and beta train only if the caller trains them);
            ``"freeze"``: the layers are made non-trainable, which in Keras 3 means inference mode
            (running statistics used, never updated; gamma and beta no longer trainable variables).

    Example:
        >>> set_bn_policy(model, "freeze")  # doctest: +SKIP
    """
    if policy not in ("update", "freeze"):
        raise ValueError(f"unknown BatchNorm policy {policy!r}: choose update or freeze")
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = policy == "update"
