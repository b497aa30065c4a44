"""A training recipe: the optimiser, schedule, augmentation and BatchNorm policy of one training run.

The experiment's presets fill one for pretraining and one for Retrain (``[pretrain]``, ``[retrain]``);
the methods that train with another recipe build their own. The loop reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    schedule: str = "constant"  # constant | cosine | warmup_cosine
    warmup_steps: int = 0  # warmup_cosine only
    clip_norm: float = 0.0  # global gradient-norm clipping; 0 disables
    augment: list[str] = field(default_factory=list)  # any of crop, flip, mixup
    mixup_alpha: float = 0.2
    bn: str = "update"  # update: batch statistics and running-stat updates (torch train mode); freeze
    precision: str = "float32"  # bfloat16: bfloat16 compute on float32 master weights (GPUs/TPUs)
