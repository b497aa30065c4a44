"""A training recipe: the optimiser, schedule, augmentation and BatchNorm policy of one training run.

The experiment's presets fill one for pretraining and one for Retrain (``[pretrain]``, ``[retrain]``);
the methods that train with another recipe build their own. The loop reads nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainConfig:
    """One training recipe: optimiser, schedule, augmentation, BatchNorm policy.

    The experiment's ``[pretrain]`` and ``[retrain]`` sections, and what the pools built from
    scratch train with (``plk.scratch_pool``, ``plk.ulira``'s shadows). Each field is commented
    below with its choices; the optimiser and schedule are ``training.optim.make_optimizer``'s.

    Example:
        >>> TrainConfig(epochs=20, optimizer="adam", lr=1e-3).schedule
        'constant'
    """

    epochs: int = 1
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # sgd: coupled L2 on all weights, as torch; adamw: decoupled, matrices only
    schedule: str = "constant"  # constant | cosine | warmup_cosine | triangle
    warmup_steps: int = 0  # warmup_cosine only
    clip_norm: float = 0.0  # global gradient-norm clipping; 0 disables
    augment: list[str] = field(default_factory=list)  # any of crop, flip, mixup, translate, altflip
    mixup_alpha: float = 0.2
    bn: str = "update"  # update: batch statistics and running-stat updates (torch train mode); freeze
    precision: str = "float32"  # bfloat16: bfloat16 compute on float32 master weights (GPUs/TPUs)
    # airbench94's recipe (Jordan 2024); each default leaves the recipes above unchanged
    nesterov: bool = False  # sgd only: Nesterov momentum (torch's form)
    label_smoothing: float = 0.0  # targets (1 - s) one-hot + s / classes, as torch's CrossEntropyLoss
    peak_fraction: float = 0.23  # triangle: the step fraction where the rate peaks (linear up, then down)
    start_factor: float = 0.2  # triangle: the rate at step 0, as a fraction of lr
    end_factor: float = 0.07  # triangle: the rate at the last step, as a fraction of lr
    norm_lr_scale: float = 1.0  # sgd: lr multiplier of normalisation layers' parameters (their L2 term / it)
    lookahead_every: int = 0  # > 0: every N steps the weights move to their EMA and continue from it
    lookahead_decay: float = 0.95 ** 5  # the EMA's decay at the last step ...
    lookahead_power: float = 3.0  # ... ramped as decay * (step / steps) ** power; the last step takes the EMA
    whiten_bias_epochs: int = 0  # > 0: a whitening stem's bias (airbench) trains this many epochs, then stays


# Fields added after runs were keyed on the recipe: at their defaults they leave a stage's key as it was.
AIRBENCH_FIELDS = ("nesterov", "label_smoothing", "peak_fraction", "start_factor", "end_factor", "norm_lr_scale",
                   "lookahead_every", "lookahead_decay", "lookahead_power", "whiten_bias_epochs")
LATER_FIELDS = ("precision", *AIRBENCH_FIELDS)


def recipe_identity(recipe: TrainConfig | dict[str, Any], later: tuple[str, ...] = LATER_FIELDS) -> dict[str, Any]:
    """The recipe as the keys of trained models hash it: every field, less the later fields at their
    defaults (a run keyed before they existed keeps its key; ``later``: which fields) and the triangle's shape when the
    schedule is not a triangle, the lookahead's when it is off.

    Args:
        recipe: a ``TrainConfig`` or its ``asdict`` form.
        later: the fields left out at their defaults.
    Returns:
        The recipe as a dict, those fields left out.

    Example:
        >>> recipe_identity(TrainConfig(epochs=3)) == recipe_identity(TrainConfig(epochs=3, start_factor=0.5))
        True
    """
    out = asdict(recipe) if isinstance(recipe, TrainConfig) else dict(recipe)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    unused = set()
    if out.get("schedule") != "triangle":
        unused |= {"peak_fraction", "start_factor", "end_factor"}
    if not out.get("lookahead_every"):
        unused |= {"lookahead_decay", "lookahead_power"}
    for name in later:
        if name in out and (name in unused or out[name] == defaults[name]):
            del out[name]
    return out
