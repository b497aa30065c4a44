"""Which layers a method prunes, wraps with adapters and trains in full (``find_targets``), on any
functional or Sequential Keras model; ``plk.unlearn`` and the pools call it for a user's model.

Example:
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
    >>> find_targets(m).targets.lora
    ['a']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras

from prunelora_keras.evaluation.features import classifier_layer
from prunelora_keras.methods.base import Targets
from prunelora_keras.models.lora import LORA_LAYERS, matches_any


@dataclass
class FoundTargets:
    """``find_targets``' answer: the ``methods.Targets`` and the layers LoRA cannot wrap.

    ``not_wrappable``: {layer name: why} for layers with weights that no adapter covers
    (DepthwiseConv2D, SeparableConv2D, grouped Conv2D, ...): frozen under the LoRA methods.
    """

    targets: Targets
    not_wrappable: dict[str, str] = field(default_factory=dict)



def _kind(layer) -> str | None:
    """Why LoRA cannot wrap a weighted layer (None: it can, or it has nothing to wrap)."""
    if isinstance(layer, LORA_LAYERS):
        return None
    if isinstance(layer, keras.layers.Conv2D):
        if layer.groups != 1 or layer.data_format != "channels_last":
            return "grouped or channels_first Conv2D"
        return None
    if isinstance(layer, keras.layers.Dense):
        return None
    if any(len(w.shape) >= 2 for w in layer.trainable_weights) and not isinstance(layer, keras.Model):
        return type(layer).__name__
    return None


def find_targets(model: keras.Model, targets: Sequence[str] | None = None, lora_targets: Sequence[str] | None = None,
                 train_in_full: Sequence[str] | None = None, classifier: str | None = None,
                 prune_classifier: str = "reference") -> FoundTargets:
    """The layers a method prunes, wraps with adapters and trains in full, found or checked.

    Args:
        model: a functional or Sequential Keras model.
        targets: regular expressions over layer names for pruning (default: every Dense and
            Conv2D, the classifier only with ``prune_classifier="true"``).
        lora_targets: patterns for adapters (default: every Dense/ungrouped Conv2D but the classifier).
        train_in_full: patterns of layers trained in full beside adapters (peft's
            ``modules_to_save``; default: the classifier).
        classifier: the classifier layer's name (default: the layer producing the logits,
            ``features.classifier_layer``; else the last Dense layer).
        prune_classifier: "true" prunes the classifier too; "reference"/"false" keep it (the rule
            of the paper's CNN; the reference pruned its ViT's head).
    Returns:
        ``FoundTargets``; ValueError when a given pattern matches no layer.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
        >>> found = find_targets(m)
        >>> found.targets.classifier, found.targets.lora, found.targets.train_in_full
        ('b', ['a'], ['b'])
    """
    layers = list(model.layers)
    weighted = [layer for layer in layers if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]
    if classifier is None:
        try:
            classifier = classifier_layer(model).name
        except ValueError:  # several outputs, or probabilities: the last Dense layer, if any
            dense = [layer.name for layer in layers if isinstance(layer, keras.layers.Dense)]
            classifier = dense[-1] if dense else None
    elif classifier not in {layer.name for layer in layers}:
        raise ValueError(f"classifier {classifier!r} is not a layer of {model.name}")
    exact = lambda names: [re.escape(n) for n in names]  # noqa: E731
    not_wrappable = {layer.name: why for layer in layers if (why := _kind(layer)) is not None}
    for what, patterns in (("targets", targets), ("lora_targets", lora_targets), ("train_in_full", train_in_full)):
        if patterns is not None and not any(matches_any(layer.name, patterns) for layer in layers):
            raise ValueError(f"{what} {list(patterns)} match no layer of {model.name}; its Dense/Conv2D layers: "
                             f"{', '.join(layer.name for layer in weighted[:8])}{' ...' if len(weighted) > 8 else ''}")
    if targets is None:
        targets = exact(layer.name for layer in weighted if layer.name != classifier or prune_classifier == "true")
    if lora_targets is None:
        lora_targets = exact(layer.name for layer in weighted if layer.name != classifier and layer.name
                             not in not_wrappable)
    else:  # given patterns: a matched layer LoRA cannot wrap is reported, never silently skipped
        not_wrappable = {n: why for n, why in not_wrappable.items() if matches_any(n, lora_targets)} or not_wrappable
    if train_in_full is None:
        train_in_full = exact([classifier]) if classifier else []
    return FoundTargets(Targets(list(targets), list(lora_targets), list(train_in_full), classifier), not_wrappable)
