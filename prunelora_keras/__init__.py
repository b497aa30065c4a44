"""prunelora-keras: machine unlearning (PruneLoRA and baselines) for Keras 3 on JAX.

Importing the package selects the JAX backend unless ``KERAS_BACKEND`` is set explicitly,
so a ``~/.keras/keras.json`` that names another backend does not break it. An exported
``KERAS_BACKEND`` always wins.

It also registers every custom layer the package's models and adapters use (the ViT's position
embedding, attention and GELU, ``FlatDense``, ``FastConv2D``, ``FastDepthwiseConv2D``,
``FastMaxPool2D``, airbench's initialiser, the LoRA layers), so a saved model loads in a fresh
process after ``import prunelora_keras``:

    import prunelora_keras  # noqa: F401
    import keras
    model = keras.saving.load_model("runs/vit-quick-seed0/continual/request1/lora.keras")

Importing the package imports neither Keras nor JAX, so the command answers ``--help`` and bad
arguments at once: the layers are registered as soon as Keras itself is imported (at once, if it
already is; otherwise by a one-shot import hook on ``keras``), and the public names below load on
first use (PEP 562).
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"

# The modules that register the custom layers (``keras.saving.register_keras_serializable``).
_LAYER_MODULES = ("prunelora_keras.models.layers", "prunelora_keras.models.lora", "prunelora_keras.models.vit",
                  "prunelora_keras.models.airbench")


def _register_layers() -> None:
    for name in _LAYER_MODULES:
        importlib.import_module(name)


class _RegisterLayersAfterKeras(importlib.abc.MetaPathFinder):
    """A one-shot post-import hook: when ``keras`` is first imported, run its module as usual, then
    import the layer modules, so ``import prunelora_keras; import keras; keras.saving.load_model(...)``
    finds every custom layer without this package importing Keras itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; and the lookup below then finds keras the ordinary way
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            from prunelora_keras.errors import unknown_backend

            wrong = unknown_backend()  # KERAS_BACKEND=JAX: one line, not Keras's thirty-line traceback
            if wrong is not None:
                raise wrong
            try:
                exec_module(module)
            except ImportError as exc:  # Keras's configured backend is not installed: say so, with the fix
                from prunelora_keras.errors import backend_unavailable

                err = backend_unavailable(exc)
                if err is None:
                    raise
                raise err from exc
            _register_layers()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance
        return spec


if "keras" in sys.modules:
    _register_layers()
elif not any(isinstance(f, _RegisterLayersAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterLayersAfterKeras())

# The public API, flat: ``import prunelora_keras as plk; plk.unlearn(...)``. Loaded on first use, so
# that ``import prunelora_keras`` (e.g. to load a saved model) stays light.
_PUBLIC = {
    **dict.fromkeys(("unlearn", "evaluate", "UnlearnResult", "prune", "copy_model", "unlearn_options"),
                    "prunelora_keras.api.library"),
    **dict.fromkeys(("find_targets", "FoundTargets"), "prunelora_keras.api.targets"),
    **dict.fromkeys(("method_pool", "scratch_pool", "unlearn_pool"), "prunelora_keras.api.pools"),
    **dict.fromkeys(("add_lora", "merge"), "prunelora_keras.models.lora"),
    **dict.fromkeys(("PruneMasks", "PruneResult", "MaskConstraint", "sparsity_report"), "prunelora_keras.models.pruning"),
    "Trainer": "prunelora_keras.training.loop", "PoolTrainer": "prunelora_keras.training.pool_trainer",
    "train_step": "prunelora_keras.training.step", "LossInputs": "prunelora_keras.training.step",
    "Preprocess": "prunelora_keras.data.augment", "predict_logits": "prunelora_keras.training.inference",
    "UnlearnConfig": "prunelora_keras.methods.options", "methods": "prunelora_keras.methods",
    "prepare_method": "prunelora_keras.methods.prepare", "clear_caches": "prunelora_keras.training.caches",
    **dict.fromkeys(("forgetting_quality", "klom"), "prunelora_keras.evaluation.forgetting_quality"),
    **dict.fromkeys(("ulira", "ULiRAReport"), "prunelora_keras.api.ulira"),
    **dict.fromkeys(("ulira_test", "paired_halves", "logit_confidence"), "prunelora_keras.evaluation.ulira"),
    **dict.fromkeys(("rmia_test", "rmia_scores", "RMIAResult"), "prunelora_keras.evaluation.rmia"),
    "TrainConfig": "prunelora_keras.training.recipe",
    **dict.fromkeys(("tune_method", "TuneResult"), "prunelora_keras.api.tune"),
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
