"""What identifies a run: the configuration as checkpoint, paradigm and folder keys hash it.

Fields added to the configuration after runs were keyed must not rename what those runs wrote, where
they change nothing (``keyed``); the run folder's name carries a hash of any configuration that is not
the preset's own (``config_tag``); a folder's stored configuration is compared the same way
(``same_config``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from prunelora_keras.experiment.config import build_config
from prunelora_keras.training.recipe import AIRBENCH_FIELDS, LATER_FIELDS, recipe_identity


def keyed(config: dict[str, Any], later: tuple[str, ...] = LATER_FIELDS) -> dict[str, Any]:
    """``Config.to_dict()`` as run keys hash it: the fields added after runs were keyed, where they
    change nothing (recipe fields ``later`` at their defaults, airbench's widths on other models, the
    TTA accuracy's option when off), left out, so earlier runs keep their checkpoints' and folders' names.

    Example:
        >>> "widths" in keyed(build_config("vit", "quick").to_dict())["model"]
        False
    """
    out = dict(config)
    for section in ("pretrain", "retrain"):
        if section in out:
            out[section] = recipe_identity(out[section], later)
    if "eval" in out and not out["eval"].get("tta"):  # off: as before the option existed
        out["eval"] = {k: v for k, v in out["eval"].items() if k != "tta"}
    if "model" in out and out["model"].get("name") != "airbench":
        out["model"] = {k: v for k, v in out["model"].items() if k != "widths"}
    return out


def same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a run folder's stored configuration ``old`` is ``new``, compared as keys compare them: a
    folder written before a field existed holds the same configuration.

    Example:
        >>> same_config(build_config("vit", "quick").to_dict(), build_config("vit", "quick").to_dict())
        True
    """
    return keyed(old, AIRBENCH_FIELDS) == keyed(new, AIRBENCH_FIELDS)


def preset_difference(cfg) -> dict | None:
    """The preset's own configuration for this model and seed, as a dict, when ``cfg`` differs from it (None
    when it does not)."""
    default = dataclasses.replace(build_config(cfg.model.name, cfg.preset), seed=cfg.seed).to_dict()
    return None if default == cfg.to_dict() else default


def config_tag(cfg) -> str:
    """"" for the preset's own configuration, else "-" and 8 hex digits of the configuration's hash.

    Why: the default run folder used to be named after model, preset and seed alone, so every variation
    of the first command (another class, epochs, data set, a tuned ``--config``) met the preset run's
    results and was refused; each configuration now has a folder of its own, and rerunning the same
    command still finds (and resumes) its own.

    Example:
        >>> config_tag(build_config("vit", "quick")), len(config_tag(build_config("vit", "quick", sets=["seed=3", "data.forget_class=5"])))
        ('', 9)
    """
    if preset_difference(cfg) is None:
        return ""
    config = keyed(cfg.to_dict(), AIRBENCH_FIELDS)  # fields added later, where they change nothing, keep earlier folders
    return "-" + hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
