"""Frozen-prefix feature cache: train only the part of a model that can change.

When only the last layers train (the ViT's LoRA and PruneLoRA train the head's adapter, or the
last block's out-projection and the head), every layer before them is a fixed function of the
input. Their outputs can be computed once per data set and the training loop can run the suffix
alone: one forward pass through the prefix per data set instead of one forward and backward pass
through the suffix *and* a forward pass through the prefix per step.

This is exact only when the prefix behaves the same in every step: no augmentation of the input,
and no layer in the prefix that draws random numbers (dropout) or updates state in training
(BatchNorm with running-statistic updates). :func:`split_frozen_prefix` checks the second
condition on the layers' state (a layer with non-trainable variables that training would change
makes the split refuse, with the reason); the caller checks the first.

The cut is found on the functional graph: a node belongs to the suffix if its layer owns a
trained variable or if it consumes a tensor that a suffix node produced. The cut tensors are
the prefix tensors that suffix nodes consume. The prefix is ``Model(model.inputs, cut)`` and the
suffix ``Model(cut, model.outputs)``; both share the original layers and variables, so training
the suffix trains the model.
"""

from __future__ import annotations

from collections.abc import Sequence
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import keras
import numpy as np

from prunelora_keras.data.augment import Preprocess, infer_images
from prunelora_keras.training.inference import padded_batches


@dataclass
class PrefixSplit:
    """A model cut in two at its first trained layers."""

    prefix: keras.Model
    suffix: keras.Model
    prefix_layers: list[str]
    suffix_layers: list[str]

    @property
    def feature_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape[1:]) for t in self.prefix.outputs]


def _changes_in_training(layer: keras.layers.Layer) -> bool:
    """True if running ``layer`` in training mode changes its state or draws random numbers."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.trainable  # trainable BN updates its running statistics (frozen BN: inference mode)
    return bool(layer.non_trainable_variables)  # seed-generator states (dropout, noise), counters, ...


def split_frozen_prefix(model: keras.Model, train_vars: Sequence[keras.Variable]
                        ) -> tuple[PrefixSplit | None, str]:
    """Cut ``model`` before the first layers that own ``train_vars``.

    Returns ``(split, "")``, or ``(None, reason)`` when no useful exact cut exists.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        return None, "not a functional model"
    trained = {id(v) for v in train_vars}
    suffix_nodes, suffix_tensors = [], set()
    prefix_ops = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if op is None or node.is_input:
                continue
            owns = any(id(v) in trained for v in getattr(op, "variables", []))
            if owns or any(id(t) in suffix_tensors for t in node.input_tensors):
                suffix_nodes.append(node)
                suffix_tensors.update(id(t) for t in node.outputs)
            else:
                prefix_ops.append(op)
    if not suffix_nodes:
        return None, "nothing trains"
    cut, seen = [], set()
    for node in suffix_nodes:
        for t in node.input_tensors:
            if id(t) not in suffix_tensors and id(t) not in seen:
                seen.add(id(t))
                cut.append(t)
    input_ids = {id(t) for t in model.inputs}
    if all(id(t) in input_ids for t in cut):
        return None, "the first trained layer reads the model input: no prefix to cache"
    changing = [op.name for op in prefix_ops if isinstance(op, keras.layers.Layer) and _changes_in_training(op)]
    if changing:
        return None, f"prefix layers change in training (dropout/BatchNorm updates): {', '.join(changing[:3])}"
    prefix = keras.Model(model.inputs, cut, name=f"{model.name}_prefix")
    suffix = keras.Model(cut, model.outputs, name=f"{model.name}_suffix")
    names = lambda ops: [op.name for op in ops if isinstance(op, keras.layers.Layer)]  # noqa: E731
    return PrefixSplit(prefix, suffix, names(prefix_ops), names([n.operation for n in suffix_nodes])), ""


def compute_features(prefix: keras.Model, x: np.ndarray, preprocess: Preprocess,
                     batch_size: int = 512) -> list[np.ndarray]:
    """The prefix's outputs for every image of ``x`` (uint8), in compiled batches, kept on the host
    as float32 (a bfloat16 prefix's features too: the suffix casts them to its compute dtype)."""

    @jax.jit
    def features_fn(trainable, non_trainable, images):
        out = infer_images(prefix, trainable, non_trainable, images, preprocess)
        return tuple(o.astype(jnp.float32) for o in (out if isinstance(out, (list, tuple)) else [out]))

    trainable = [v.value for v in prefix.trainable_variables]
    non_trainable = [v.value for v in prefix.non_trainable_variables]
    return padded_batches(lambda xb: features_fn(trainable, non_trainable, xb), x, min(batch_size, max(len(x), 1)),
                          data_parallel=False)


@dataclass
class CachedFeatures:
    """Features of one data set and what they cost."""

    split: PrefixSplit
    features: list[np.ndarray]
    seconds: float

    @property
    def nbytes(self) -> int:
        return int(sum(f.nbytes for f in self.features))


def cache_features(split: PrefixSplit, x: np.ndarray, preprocess: Preprocess,
                   batch_size: int = 512) -> CachedFeatures:
    start = time.perf_counter()
    features = compute_features(split.prefix, x, preprocess, batch_size)
    return CachedFeatures(split, features, time.perf_counter() - start)


def feature_bytes(split: PrefixSplit, n: int) -> int:
    """Host memory the cached features of ``n`` samples will take (float32)."""
    return int(sum(n * int(np.prod(s)) * 4 for s in split.feature_shapes))
