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
