"""Eager set-up work compiles a fixed number of XLA programs, not one per layer.

On JAX every eager operation on a new shape is a compilation (tens of milliseconds to a second on a
CPU). Calling a model eagerly, merging adapters with ``keras.ops`` or copying variables one by one
compiled a program per layer shape: on the README's MobileNetV3Small about 530 of them, a third of
``unlearn``'s minutes. Each check here compares a model of two convolutions with one of six, all of
other shapes: the number of programs lowered must not grow with the layers."""

import contextlib

import jax
import keras
import numpy as np
import optax
import pytest

from prunelora_keras.api.checks import require_logits
from prunelora_keras.data.datasets import Preprocess
from prunelora_keras.models.lora import add_lora, merge
from prunelora_keras.models.pruning import prune_units, sparsity_report
from prunelora_keras.training.loop import Trainer

_LOWERED = [0]


def _count(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":  # every program traced to XLA, cached or not
        _LOWERED[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


@contextlib.contextmanager
def lowered():
    """Yields a list whose one entry, after the block, is how many programs it lowered."""
    out, start = [0], _LOWERED[0]
    yield out
    out[0] = _LOWERED[0] - start


def _convnet(depth: int) -> keras.Model:
    x = inputs = keras.Input((8, 8, 3))
    for i in range(depth):
        x = keras.layers.Conv2D(5 + 2 * i, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _counts(depth: int) -> dict[str, int]:
    keras.utils.set_random_seed(0)
    model = _convnet(depth)
    x = np.random.default_rng(0).uniform(size=(8, 8, 8, 3)).astype("float32")
    counts = {}
    with lowered() as n:
        require_logits(model, x)
    counts["require_logits"] = n[0]
    targets = [f"conv{i}" for i in range(depth)]
    result = prune_units(model, targets, 0.5, mode="persistent")  # in place
    with lowered() as n:  # masks, copies and the optimiser state
        Trainer(model, optax.adam(1e-3), num_classes=4, preprocess=Preprocess(), masks=result.enforced(),
                verbose=False)
    counts["trainer_setup"] = n[0]
    adapted, _ = add_lora(model, [*targets, "head"], rank=2)
    adapted.get_layer("conv0").lora_b.assign(np.ones(adapted.get_layer("conv0").lora_b.shape))  # a delta to fold
    with lowered() as n:
        plain = merge(adapted)
        sparsity_report(adapted)
    counts["merge"] = n[0]
    assert np.allclose(plain.predict(x, verbose=0), adapted.predict(x, verbose=0), atol=1e-4)
    return counts


def test_eager_set_up_compiles_as_many_programs_for_six_layers_as_for_two():
    counts = {depth: _counts(depth) for depth in (2, 6)}
    assert counts[6] == counts[2], counts
    assert counts[6]["merge"] == 0 and counts[6]["require_logits"] <= 1, counts  # the merge runs on the host
