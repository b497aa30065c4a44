"""``--plugin``: the commands load a user's module that registers methods, before they check names.

``plk.methods.register`` adds a method to the registry of the process that calls it; the commands
(``python -m prunelora_keras.run`` and ``.tune``) run in a process of their own, so they import the
user's module first (``--plugin mymethods`` on ``sys.path``, or ``--plugin path/to/mymethods.py``),
and its methods then reach ``--paradigms``, ``--set <method>.<key>``, ``tune --method`` and the report
like the built-in ones.

Example:
    >>> load_plugins([])  # nothing to load
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from prunelora_keras.errors import UserError


def load_plugins(specs: Sequence[str]) -> None:
    """Import each module of ``specs`` (a module name, or a ``.py`` file's path) once, in order.

    Args:
        specs: what ``--plugin`` named (each may list several, comma-separated).
    Raises:
        UserError: a module that cannot be found or fails while importing (one line naming it and why).
    """
    for spec in (s.strip() for text in specs for s in text.split(",")):
        if not spec:
            continue
        try:
            if spec.endswith(".py"):
                path = Path(spec).expanduser()
                if not path.is_file():
                    raise UserError(f"--plugin {spec}: no such file; pass a .py file that registers methods, or a module "
                                    "name on the Python path")
                name = f"prunelora_plugin_{path.stem}"
                module_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except UserError:
            raise
        except ModuleNotFoundError as exc:
            if spec.endswith(".py") or not (spec == exc.name or spec.startswith(f"{exc.name}.")):
                # the plugin was found; something it imports was not
                raise UserError(f"--plugin {spec} failed while importing ({exc}): install what it imports") from None
            raise UserError(f"--plugin {spec}: {exc}; pass a module on the Python path (run from its folder, or set "
                            "PYTHONPATH) or the .py file's path") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed: say which and why, in one line
            raise UserError(f"--plugin {spec} failed while importing ({exc.__class__.__name__}: {exc})") from None
