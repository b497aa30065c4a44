"""The one exception type for bad user input.

Anything raised as ``UserError`` reaches the user as a single line and exit code 2 (see
``run.py``); everything else is a bug and keeps its traceback.
"""

import re


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, on one line.

    Line breaks are folded into spaces here, so a message that quotes a multi-line library error
    (a TOML parser, PIL, tarfile) still prints as the one line promised above.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip(), *args)


class TrainingFailed(Exception):
    """Training that cannot produce a usable result, e.g. non-finite loss in the original model:
    printed as one line with exit code 1 by ``run.py`` (not the user's input, so not exit 2)."""



# Keras's backends and the module each one imports.
BACKEND_MODULES = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow", "openvino": "openvino", "numpy": "numpy"}


class BackendUnavailable(ValueError):
    """Keras's configured backend is not installed, so Keras itself cannot be imported.

    A ``ValueError`` (the library's one-line error naming the fix); the command prints it as one
    ``error:`` line with exit code 2.
    """


def backend_unavailable(exc: BaseException) -> BackendUnavailable | None:
    """The one-line error for ``exc``, raised by ``import keras``, where its cause is that the
    configured backend's module is not installed; None for any other failure.

    Keras takes its backend from ``KERAS_BACKEND``, else from ``~/.keras/keras.json`` (or
    ``$KERAS_HOME/keras.json``), which Keras writes naming ``tensorflow`` the first time it is
    imported: where TensorFlow is not installed, ``import keras`` then fails deep inside Keras with
    "No module named 'tensorflow'", which does not say that the backend setting is the cause.
    """
    import importlib.util
    import json
    import os

    missing = (getattr(exc, "name", None) or "").split(".")[0]
    if not isinstance(exc, ImportError) or not missing:
        return None
    backend, source = os.environ.get("KERAS_BACKEND"), "KERAS_BACKEND"
    if not backend:
        source = os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"),
                              "keras.json")
        try:
            with open(source) as f:
                backend = json.load(f).get("backend")
        except (OSError, ValueError, AttributeError):
            return None
    if BACKEND_MODULES.get(str(backend)) != missing:
        return None
    others = [b for b in ("jax", "torch", "tensorflow") if b != backend and importlib.util.find_spec(b) is not None]
    alts = [b for b in others if b != "jax"]
    fix = ("set KERAS_BACKEND=jax" + (f" (or another installed backend: {', '.join(alts)})" if alts else "")
           if "jax" in others else
           f"install it (pip install -e .) or set KERAS_BACKEND to an installed backend ({', '.join(others) or 'none'})")
    return BackendUnavailable(f"Keras's backend {backend!r} (from {source}) is not installed (No module named "
                              f"{missing!r}): {fix}")


def unknown_backend(backend: str | None = None) -> BackendUnavailable | None:
    """The one-line error for a ``KERAS_BACKEND`` that names no Keras backend ("JAX", "jaxx"), else None.

    Keras answers such a value with a traceback of some thirty lines ending in "Unable to import
    backend"; this says which value is wrong and what to set instead, before Keras is imported.

    Args:
        backend: the value to check; None reads ``KERAS_BACKEND`` (unset: nothing to refuse).

    Example:
        >>> str(unknown_backend("JAX"))[:52]
        "KERAS_BACKEND='JAX' is not a Keras backend: set jax "
        >>> unknown_backend("torch") is None, unknown_backend("") is None
        (True, True)
    """
    import difflib
    import os

    backend = os.environ.get("KERAS_BACKEND") if backend is None else backend
    if not backend or backend in BACKEND_MODULES:  # unset or empty: Keras reads keras.json, as it always did
        return None
    near = difflib.get_close_matches(backend.lower(), list(BACKEND_MODULES), n=1)
    fix = f"set {near[0]}" if near else f"set one of {', '.join(BACKEND_MODULES)}"
    return BackendUnavailable(f"KERAS_BACKEND={backend!r} is not a Keras backend: {fix} (lower case), or unset it "
                              "(this package then uses jax)")
