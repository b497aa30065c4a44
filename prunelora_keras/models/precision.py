"""Compute precision of the unlearning run: float32, or bfloat16 compute on float32 master weights.

``unlearn.precision = "bfloat16"`` rebuilds the model with Keras's ``mixed_bfloat16`` dtype
policy: every layer computes in bfloat16 (matmuls and convolutions at twice the throughput and
half the activation memory on GPUs and TPUs), while the variables, their gradients, the
optimiser state and the pruning masks stay float32. The loss is computed in float32 on the
logits (``train.Trainer``). Evaluation rebuilds the trained model in float32, so the metrics are
those of the float32 master weights, comparable with a float32 run.

On CPUs bfloat16 is emulated and usually slower; the option is meant for accelerators.
"""

from __future__ import annotations

import keras

from prunelora_keras.models.lora import replace_layers

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional ``model`` whose layers use the dtype ``policy`` (weights copied).

    ``policy`` is a Keras dtype policy name, e.g. ``"mixed_bfloat16"`` or ``"float32"``. The
    input layers keep their dtype; the returned model computes the same function as ``model`` up
    to the precision of ``policy``.
    """

    def replace(layer):
        config = layer.get_config()
        if "dtype" not in config:
            return None
        return layer.__class__.from_config({**config, "dtype": policy})

    return replace_layers(model, replace)


def training_model(model: keras.Model, precision: str) -> keras.Model:
    """``model`` as the unlearning loop should train it under ``unlearn.precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    return model if precision == "float32" else with_dtype_policy(model, PRECISIONS[precision])


def evaluation_model(model: keras.Model) -> keras.Model:
    """``model`` in float32 (itself when it already is): metrics of the float32 master weights."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers if hasattr(layer, "dtype_policy")):
        return model
    return with_dtype_policy(model, "float32")
