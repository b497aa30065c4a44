"""prunelora-keras: machine unlearning (PruneLoRA and baselines) for Keras 3 on JAX.

Importing the package selects the JAX backend unless ``KERAS_BACKEND`` is set explicitly,
so a ``~/.keras/keras.json`` that names another backend does not break it. An exported
``KERAS_BACKEND`` always wins.

It also registers every custom layer the package's models and adapters use (the ViT's position
embedding, attention and GELU, ``FlatDense``, the LoRA layers), so a saved model loads in a fresh
process after ``import prunelora_keras``:

    import prunelora_keras  # noqa: F401
    import keras
    model = keras.saving.load_model("runs/vit-quick-seed0/continual/request1/lora.keras")
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"

from prunelora_keras import conv, lora  # noqa: E402,F401  (register the custom layers with Keras)
from prunelora_keras.models import vit  # noqa: E402,F401

# The public API, flat: ``import prunelora_keras as plk; plk.unlearn(...)``. Loaded on first use, so
# that ``import prunelora_keras`` (e.g. to load a saved model) stays light.
_PUBLIC = {
    "unlearn": "prunelora_keras.api", "evaluate": "prunelora_keras.api", "UnlearnResult": "prunelora_keras.api",
    "find_targets": "prunelora_keras.api", "prune": "prunelora_keras.api", "copy_model": "prunelora_keras.api",
    "unlearn_options": "prunelora_keras.api", "FoundTargets": "prunelora_keras.api",
    "add_lora": "prunelora_keras.lora", "merge": "prunelora_keras.lora",
    "PruneMasks": "prunelora_keras.pruning", "PruneResult": "prunelora_keras.pruning",
    "MaskConstraint": "prunelora_keras.pruning",
    "sparsity_report": "prunelora_keras.pruning",
    "Trainer": "prunelora_keras.train", "train_step": "prunelora_keras.step", "LossInputs": "prunelora_keras.step",
    "UnlearnConfig": "prunelora_keras.options", "methods": "prunelora_keras.methods",
    "prepare_method": "prunelora_keras.unlearning",
    "PoolTrainer": "prunelora_keras.ensemble", "method_pool": "prunelora_keras.pools",
    "scratch_pool": "prunelora_keras.pools", "forgetting_quality": "prunelora_keras.forgetting_quality",
    "klom": "prunelora_keras.forgetting_quality", "unlearn_pool": "prunelora_keras.pools",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'prunelora_keras' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_PUBLIC[name])
    return module if name == "methods" else getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
