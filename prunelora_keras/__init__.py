"""prunelora-keras: machine unlearning (PruneLoRA and baselines) for Keras 3 on JAX.

Importing the package selects the JAX backend unless ``KERAS_BACKEND`` is set explicitly,
so a ``~/.keras/keras.json`` that names another backend does not break it. An exported
``KERAS_BACKEND`` always wins.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"
