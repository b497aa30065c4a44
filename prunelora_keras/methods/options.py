"""The unlearning options: every knob of every method, with the paper's and the methods' published
defaults, as one typed dataclass (``UnlearnConfig``).

The command reads them from presets and ``--set unlearn.<key>=...``; ``prunelora_keras.unlearn``
takes them as keyword arguments. ``check_unlearn`` is their one validation, used by both (types,
the allowed values in ``UNLEARN_CHOICES``, ranges): the command turns its ``ValueError`` into the
one-line ``error:`` exit, the library raises it as it is. Method names come from the registry
(``methods.registry``).
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

PAPER_PARADIGMS = ("retrain", "finetune", "pruned", "lora", "pruned_lora")  # the default: the paper's table


@dataclass
class UnlearnConfig:
    """Every unlearning option, with the paper's and each method's published defaults (the fields
    below); ``--set unlearn.<field>=...`` on the command, ``plk.unlearn(**{field: value})`` in the
    library. Example: ``UnlearnConfig(lora_rank=4).lora_alpha == 16.0``.

    The approximate-unlearning paradigms (REFERENCE.md): Adam 1e-3, batch 128, 5 and 10 epochs on D_r."""

    paradigms: list[str] = field(default_factory=lambda: list(PAPER_PARADIGMS))
    epochs: list[int] = field(default_factory=lambda: [5, 10])  # one run of max(epochs); earlier columns on the way
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    bn: str = "update"  # update: BN running statistics update, as torch train mode under peft; freeze
    prune_amount: float = 0.5
    prune_mode: str = "reference"  # reference: zeros once (torch prune.remove); persistent: enforced
    prune_heads: bool = False  # ViT: also prune whole attention heads of the last block (our addition)
    # reference: the classifier is a pruning target where the reference prunes it (the ViT's head, not the
    # ResNet's Linear); true: on both models; false: on neither (the forget class's logit row is never zeroed)
    prune_classifier: str = "reference"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    vit_lora_targets: str = "reference"  # reference: head adapter only (what ran in the paper); intended: out-proj + head
    mia_members: int = 9000  # loss_logreg: retain losses drawn at full scale (scaled down 9:5 on subsets)
    mia_nonmembers: int = 5000  # loss_logreg: remaining-class test losses drawn at full scale
    prefix_cache: str = "auto"  # auto: train only the suffix on cached prefix features when exact; off
    prefix_cache_max_gb: float = 8.0  # host memory the cached features may take; larger -> uncached
    precision: str = "float32"  # bfloat16: bfloat16 compute, float32 master weights (for GPUs/TPUs)
    paradigm_l1: float = 0.0  # > 0: decaying l1 penalty on the paper paradigms' trained variables (lora: "LoRA + l1")
    # the baselines (baselines.py): SGD as in Unlearn-Sparse / SalUn, each method's published lr
    baseline_momentum: float = 0.9
    baseline_weight_decay: float = 5e-4
    ga_lr: float = 1e-4
    rl_lr: float = 0.013
    l1_lr: float = 0.01
    l1_alpha: float = 1e-4
    salun_lr: float = 0.013
    salun_ratio: float = 0.5  # fraction of weights SalUn's saliency mask lets move
    rl_labels: str = "per_batch"  # rl/salun: per_batch (a new label from all classes each epoch, as the code bases); once_other
    # relearn time (relearn.py): Adam on D_r plus this fraction of D_f, steps until the held-out rest of D_f is
    # back at the original's accuracy minus 10 points; capped at relearn_max_steps (0: no relearning)
    relearn_fraction: float = 0.1
    relearn_max_steps: int = 200
    relearn_eval_every: int = 5
    relearn_lr: float = 1e-3
    # NegGrad+ (methods/neggrad.py): alpha * CE(D_r) - (1 - alpha) * CE(D_f), SGD
    neggrad_alpha: float = 0.999
    neggrad_lr: float = 0.01
    neggrad_forget_batch: int = 0  # 0: the retain batch size (capped at |D_f|)
    # SCRUB (methods/scrub.py): the published defaults
    scrub_lr: float = 5e-4
    scrub_alpha: float = 0.001  # weight of the KL on D_r's min-steps
    scrub_gamma: float = 0.99  # weight of the cross-entropy on D_r's min-steps
    scrub_temperature: float = 4.0
    scrub_msteps: int = 2  # epochs that start with max-steps on D_f
    scrub_forget_batch: int = 32
    # the lr times scrub_lr_decay_rate ** (how many of these epochs have finished), as their adjust_learning_rate
    scrub_lr_decay_epochs: list[int] = field(default_factory=lambda: [3, 5, 9])
    scrub_lr_decay_rate: float = 0.1
    # many-model evaluation (ensemble.py, forgetting_quality.py): K models per pool, 0: off
    eval_models: int = 0
    eval_models_mode: str = "auto"  # auto | vmap | map | loop: how a pool maps its K axis (ensemble.py)
    eval_models_retain_sample: int = 1000  # KLoM on D_r: a seeded sample of this many retained images


# The string options and their allowed values (``config.CHOICES`` reads them from here).
UNLEARN_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd", "adam", "adamw"),
    "bn": ("update", "freeze"),
    "prune_mode": ("reference", "persistent"),
    "vit_lora_targets": ("reference", "intended"),
    "prune_classifier": ("reference", "true", "false"),
    "rl_labels": ("per_batch", "once_other"),
    "prefix_cache": ("auto", "off"),
    "precision": ("float32", "bfloat16"),
    "eval_models_mode": ("auto", "vmap", "map", "loop"),
}
INT_LIMIT = 2**63  # integers beyond int64 overflow as soon as numpy or JAX sees them


def did_you_mean(value: Any, choices: typing.Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid name, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(UnlearnConfig)


def _typed(name: str, value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the field's type ``tp`` (an int given for a float is converted, NumPy
    scalars are read as Python ones); ValueError naming the option, what it got and what it needs."""
    got = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}{name} must be a list of {item.__name__} values, got {got}")
        return [_typed(f"{name}[{i}]", v, item, where) for i, v in enumerate(value)]
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()  # numpy scalars (np.float32(1e-3), np.int64(4), np.bool_)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= INT_LIMIT:
            raise ValueError(f"{where}{name} = {got} is too large (integers must fit in 64 bits)")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{where}{name} must be a finite number, got {got}")
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, bool) and "true" in UNLEARN_CHOICES.get(name, ()):
        return "true" if value else "false"  # prune_classifier=True reads as its choice "true"
    kind = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}.get(tp, str(tp))
    raise ValueError(f"{where}{name} must be {kind}, got {got}")


def check_unlearn(u: UnlearnConfig, where: str = "") -> UnlearnConfig:
    """The one validation of the unlearning options: every field's type, the allowed values of the
    string options (``UNLEARN_CHOICES``) and every range (``unlearn_checks``).

    Args:
        u: the options.
        where: the prefix of each option's name in messages (the command passes ``"unlearn."``).
    Returns:
        ``u`` with lossless conversions applied in place (an int given for a float, a bool for
        ``prune_classifier``'s "true"/"false").
    Raises:
        ValueError: one line naming the option, the bad value and the fix.

    Example:
        >>> check_unlearn(UnlearnConfig(lr=1)).lr
        1.0
    """
    for name, tp in _field_types().items():
        setattr(u, name, _typed(name, getattr(u, name), tp, where))
    for name, choices in UNLEARN_CHOICES.items():
        value = getattr(u, name)
        if value not in choices:
            raise ValueError(f"{where}{name} = {value!r} is not valid: choose one of {', '.join(choices)}"
                             f"{did_you_mean(value, choices)}")
    for ok, message in unlearn_checks(u):
        if not ok:
            raise ValueError(message.replace("unlearn.", where))
    return u


def unlearn_checks(u: UnlearnConfig) -> list[tuple[bool, str]]:
    """(condition, message) pairs, the ranges ``check_unlearn`` enforces after types and choices:
    every condition must hold; the message says what to fix."""
    from prunelora_keras.methods.builtin_names import names as method_names

    names = method_names()
    bad = [p for p in u.paradigms if p not in names]
    return [
        (len(u.paradigms) >= 1 and not bad,
         f"unlearn.paradigms: {bad[0] if bad else 'none'!r} is not a method{did_you_mean(bad[0], names) if bad else ''};"
         f" choose some of {', '.join(names)}"),
        (len(set(u.paradigms)) == len(u.paradigms), "unlearn.paradigms lists a paradigm twice"),
        (len(u.epochs) >= 1 and all(e >= 1 for e in u.epochs), "unlearn.epochs must be one or more integers >= 1"),
        (u.lr > 0 and u.batch_size >= 1, "unlearn.lr must be > 0 and unlearn.batch_size >= 1"),
        (u.weight_decay >= 0, "unlearn.weight_decay must be >= 0"),
        (0 <= u.prune_amount < 1, "unlearn.prune_amount must be in [0, 1)"),
        (u.lora_rank >= 1, "unlearn.lora_rank must be >= 1"),
        (u.lora_alpha > 0, "unlearn.lora_alpha must be > 0"),
        (0 <= u.lora_dropout < 1, "unlearn.lora_dropout must be in [0, 1)"),
        (u.mia_members >= 1 and u.mia_nonmembers >= 1, "unlearn.mia_members and unlearn.mia_nonmembers must be >= 1"),
        (u.prefix_cache_max_gb > 0, "unlearn.prefix_cache_max_gb must be > 0"),
        (u.paradigm_l1 >= 0 and u.l1_alpha >= 0, "unlearn.paradigm_l1 and unlearn.l1_alpha must be >= 0"),
        (min(u.ga_lr, u.rl_lr, u.l1_lr, u.salun_lr) > 0, "unlearn.ga_lr, rl_lr, l1_lr and salun_lr must be > 0"),
        (0 <= u.baseline_momentum < 1 and u.baseline_weight_decay >= 0,
         "unlearn.baseline_momentum must be in [0, 1) and unlearn.baseline_weight_decay >= 0"),
        (0 < u.salun_ratio <= 1, "unlearn.salun_ratio must be in (0, 1]"),
        (0 < u.relearn_fraction < 1, "unlearn.relearn_fraction must be in (0, 1)"),
        (0 <= u.relearn_max_steps <= 1_000_000, "unlearn.relearn_max_steps must be in 0..1000000 (0: no relearning)"),
        (u.relearn_eval_every >= 1, "unlearn.relearn_eval_every must be >= 1"),
        (u.relearn_lr > 0, "unlearn.relearn_lr must be > 0"),
        (0 <= u.neggrad_alpha <= 1, "unlearn.neggrad_alpha must be in [0, 1]"),
        (min(u.neggrad_lr, u.scrub_lr) > 0, "unlearn.neggrad_lr and unlearn.scrub_lr must be > 0"),
        (u.neggrad_forget_batch >= 0 and u.scrub_forget_batch >= 1,
         "unlearn.neggrad_forget_batch must be >= 0 (0: the batch size) and unlearn.scrub_forget_batch >= 1"),
        (u.scrub_alpha >= 0 and u.scrub_gamma >= 0 and u.scrub_temperature > 0,
         "unlearn.scrub_alpha and unlearn.scrub_gamma must be >= 0 and unlearn.scrub_temperature > 0"),
        (u.scrub_msteps >= 0, "unlearn.scrub_msteps must be >= 0"),
        (all(e >= 1 for e in u.scrub_lr_decay_epochs) and u.scrub_lr_decay_rate > 0,
         "unlearn.scrub_lr_decay_epochs must be epochs >= 1 (empty: no decay) and unlearn.scrub_lr_decay_rate > 0"),
        (u.eval_models == 0 or 2 <= u.eval_models <= 100_000,
         "--eval-models (unlearn.eval_models) must be 0 (off) or a number of models per pool from 2 to 100000"),
        (u.eval_models_retain_sample >= 1, "unlearn.eval_models_retain_sample must be >= 1"),
    ]
