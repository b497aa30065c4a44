"""Which layers of the package's own models the methods prune and wrap (REFERENCE.md).

The methods themselves are registry entries (``methods/``); this module only says, for the
ResNets and the ViT this package builds, what ``methods.Targets`` the paper's recipes use. A
user's own model gets its targets from ``api.find_targets`` instead.

ResNet: every Conv2D is pruned (stem and shortcuts included); adapters on the three convs of
every bottleneck block, and the classifier trains in full. airbench: its six 3x3 convolutions are
pruned (not the whitening stem, which is set from the data's patch covariance, not learned: its
filters' norms are 1/sqrt(eigenvalue), no measure of importance) and carry adapters, as does the head. ViT: the last block's attention
out-projection and the head are pruned; adapters on the head only (``vit_lora_targets =
"reference"``: what really trained in the reference, whose out-projection adapter never ran) or
on the out-projection and the head (``"intended"``, as the paper describes).
"""

from __future__ import annotations

import keras

from prunelora_keras.data.augment import Preprocess
from prunelora_keras.experiment.config import Config, ModelConfig
from prunelora_keras.methods.options import UnlearnConfig
from prunelora_keras.methods.base import Plan, Targets

CLASSIFIER = "head"  # the package's models name their classifier layer so


def prune_targets(model_cfg: ModelConfig, unlearn: UnlearnConfig | None = None) -> list[str]:
    """Name patterns of the layers a pruned paradigm prunes (REFERENCE.md), with the classifier
    added or removed by ``unlearn.prune_classifier`` ("reference": as the reference does)."""
    if model_cfg.name.startswith("resnet"):
        targets = ["stem_conv", r"stage\d+_block\d+_conv\d", r"stage\d+_block\d+_shortcut_conv"]
    elif model_cfg.name == "airbench":
        targets = [r"group\d_conv\d"]
    else:
        targets = [f"block{model_cfg.depth - 1}_attn_out", CLASSIFIER]
    choice = unlearn.prune_classifier if unlearn is not None else "reference"
    if choice == "true" and CLASSIFIER not in targets:
        targets.append(CLASSIFIER)
    if choice == "false":
        targets = [t for t in targets if t != CLASSIFIER]
    return targets


def lora_targets(model_cfg: ModelConfig, unlearn: UnlearnConfig) -> tuple[list[str], list[str]]:
    """(adapter targets, modules trained in full)."""
    if model_cfg.name.startswith("resnet"):
        return [r"stage\d+_block\d+_conv\d"], ["head"]
    if model_cfg.name == "airbench":
        return [r"group\d_conv\d", "head"], []
    if unlearn.vit_lora_targets == "intended":
        return [f"block{model_cfg.depth - 1}_attn_out", "head"], []
    return ["head"], []


def config_targets(cfg: Config) -> Targets:
    """The ``methods.Targets`` of the package's model that ``cfg`` describes."""
    lora, full = lora_targets(cfg.model, cfg.unlearn)
    heads = None
    if cfg.unlearn.prune_heads and cfg.model.name == "vit":
        heads = ([f"block{cfg.model.depth - 1}"], cfg.model.heads)
    return Targets(prune_targets(cfg.model, cfg.unlearn), lora, full, CLASSIFIER, heads)


def build_recipe(name: str, model: keras.Model, cfg: Config) -> Plan:
    """Method ``name``'s plan for the package's ``model`` under ``cfg``, without data (for inspecting
    what it prunes, wraps and trains). ``model`` is changed in place where the method prunes."""
    from prunelora_keras.data.datasets import Subset
    from prunelora_keras.methods.base import MethodContext
    from prunelora_keras.methods.hparams import HParams
    from prunelora_keras.methods.registry import get
    import numpy as np

    empty = Subset(np.zeros((0,), np.uint8), np.zeros((0,), np.int64))
    ctx = MethodContext(model=model, options=cfg.unlearn, hparams=cfg.methods.get(name, HParams()), retain=empty,
                        forget=empty, num_classes=10, preprocess=Preprocess(), seed=cfg.seed,
                        targets=config_targets(cfg), drop_last=cfg.data.drop_last,
                        eval_batch_size=cfg.data.eval_batch_size, epochs=max(cfg.unlearn.epochs))
    return get(name).prepare(ctx)
