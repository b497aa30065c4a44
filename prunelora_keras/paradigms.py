"""The unlearning paradigms as recipes: which layers are pruned, which get LoRA, what trains.

Every recipe starts from a fresh copy of the original model and hands the one training loop
(``train.Trainer``) a model, its trainable variables and the masks to enforce; the loop, the
optimiser (Adam 1e-3 by default) and the data (D_r) are the same for all.

- ``finetune``: every parameter trains.
- ``pruned``: structured L2 pruning (50% of the output units of the targets), then finetune.
- ``lora``: the base is frozen; LoRA adapters (and ``modules_to_save``) train.
- ``pruned_lora`` (PruneLoRA): ``pruned``'s pruning, then ``lora``'s adapters.
- ``retrain`` is not a recipe here: it is the exact baseline trained by the pipeline.

Targets follow REFERENCE.md. ResNet: every Conv2D is pruned (stem and shortcuts included);
adapters (rank 8, alpha 16, dropout 0.1) on the three convs of every bottleneck block, and the
classifier trains in full. ViT: the last block's attention out-projection and the head are
pruned; adapters (rank 16, alpha 32, dropout 0.1) on the head only (``vit_lora_targets =
"reference"``: what really trained in the reference, whose out-projection adapter never ran) or
on the out-projection and the head (``"intended"``, as the paper describes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from prunelora_keras.config import Config, ModelConfig, UnlearnConfig
from prunelora_keras.lora import add_lora, count_params, merge
from prunelora_keras.pruning import PruneResult, gate_adapters, prune_heads, prune_units

RECIPES = ("finetune", "pruned", "lora", "pruned_lora")


CLASSIFIER = "head"  # the package's models name their classifier layer so


def prune_targets(model_cfg: ModelConfig, unlearn: UnlearnConfig | None = None) -> list[str]:
    """Name patterns of the layers a pruned paradigm prunes (REFERENCE.md), with the classifier
    added or removed by ``unlearn.prune_classifier`` ("reference": as the reference does)."""
    if model_cfg.name.startswith("resnet"):
        targets = ["stem_conv", r"stage\d+_block\d+_conv\d", r"stage\d+_block\d+_shortcut_conv"]
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
    if unlearn.vit_lora_targets == "intended":
        return [f"block{model_cfg.depth - 1}_attn_out", "head"], []
    return ["head"], []


@dataclass
class Recipe:
    """What a paradigm hands the training loop."""

    name: str
    model: keras.Model
    train_vars: list
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    uses_lora: bool = False
    pruned_layers: list[str] = field(default_factory=list)
    pruned: PruneResult | None = None  # what the pruning step zeroed (pruned paradigms)

    @property
    def trainable_params(self) -> int:
        return count_params(self.train_vars)

    def eval_model(self) -> keras.Model:
        """The model to evaluate: LoRA models merged into plain Dense/Conv2D layers."""
        return merge(self.model) if self.uses_lora else self.model


def _prune(model: keras.Model, cfg: Config) -> PruneResult:
    u = cfg.unlearn
    result = prune_units(model, prune_targets(cfg.model, u), u.prune_amount, mode=u.prune_mode)
    if u.prune_heads and cfg.model.name == "vit":
        prune_heads(model, [f"block{cfg.model.depth - 1}"], cfg.model.heads, u.prune_amount, u.prune_mode, result)
    return result


def build_recipe(name: str, original: keras.Model, cfg: Config) -> Recipe:
    """Prepare paradigm ``name`` from ``original`` (which is modified: pass a fresh copy)."""
    if name not in RECIPES:
        raise ValueError(f"unknown paradigm {name!r}; recipes: {RECIPES}")
    u = cfg.unlearn
    model = original
    pruned: PruneResult | None = None
    pruned_layers: list[str] = []
    if name in ("pruned", "pruned_lora"):
        pruned = _prune(model, cfg)
        pruned_layers = sorted({path.split("/")[0] for path in pruned.masks})
    if name in ("finetune", "pruned"):
        masks = pruned.enforced() if pruned else {}
        return Recipe(name, model, list(model.trainable_variables), masks, False, pruned_layers, pruned)
    targets, full = lora_targets(cfg.model, u)
    model, train_vars = add_lora(model, targets, u.lora_rank, u.lora_alpha, u.lora_dropout, full, seed=cfg.seed)
    masks: dict[str, np.ndarray] = {}
    if pruned is not None:
        gate_adapters(model, pruned)
        masks = pruned.enforced()  # masks on fully trained layers (e.g. the ResNet's head) still apply
    return Recipe(name, model, train_vars, masks, True, pruned_layers, pruned)
