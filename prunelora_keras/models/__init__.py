"""Model zoo: plain functional Keras models with stable, meaningful layer names.

Models know nothing of LoRA or pruning; those find layers by name pattern.
"""

from __future__ import annotations

import keras

from prunelora_keras.models.airbench import airbench
from prunelora_keras.models.resnet import resnet18, resnet50
from prunelora_keras.models.vit import simple_vit

__all__ = ["airbench", "build_model", "resnet18", "resnet50", "simple_vit"]


def build_model(model_cfg, num_classes: int, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build the model a ``ModelConfig`` names, for ``num_classes`` and images of ``input_shape``."""
    name = model_cfg.name
    if name == "resnet50":
        return resnet50(num_classes, input_shape, model_cfg.width)
    if name == "resnet18":
        return resnet18(num_classes, input_shape, model_cfg.width)
    if name == "airbench":
        return airbench(num_classes, input_shape, tuple(model_cfg.widths))
    if name == "vit":
        return simple_vit(num_classes, input_shape, model_cfg.patch_size, model_cfg.dim, model_cfg.depth,
                          model_cfg.heads, model_cfg.mlp_dim)
    raise ValueError(f"unknown model {name!r}")
