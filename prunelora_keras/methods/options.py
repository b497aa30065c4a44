"""The unlearning options every method shares (epochs, batch size, BatchNorm policy, precision, the
targets of the package's models), as one typed dataclass (``UnlearnConfig``).
Each method's own knobs are its hyperparameters (``hparams.py``).

The command reads them from presets and ``--set unlearn.<key>=...``; ``prunelora_keras.unlearn``
takes them as keyword arguments. ``check_unlearn`` is their one validation, used by both (types,
the allowed values in ``UNLEARN_CHOICES``, ranges): the command turns its ``ValueError`` into the
one-line ``error:`` exit, the library raises it as it is. Method names come from the registry
(``methods.registry``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from prunelora_keras.methods.hparams import INT_LIMIT, did_you_mean, typed  # noqa: F401  (re-exported)

PAPER_PARADIGMS = ("retrain", "finetune", "pruned", "lora", "pruned_lora")  # the default: the paper's table


@dataclass
class UnlearnConfig:
    """The unlearning options every method shares (the fields below; the evaluation's are
    ``evaluation.settings.EvalConfig``); ``--set unlearn.<field>=...``
    on the command, ``plk.unlearn(**{field: value})`` in the library. A method's own knobs (learning
    rate, rank, ...) are its hyperparameters (``methods.hparams``: ``--set scrub.lr=...``).
    Example: ``UnlearnConfig(batch_size=64).bn == "update"``.

    The approximate-unlearning paradigms (REFERENCE.md): batch 128, 5 and 10 epochs on D_r."""

    paradigms: list[str] = field(default_factory=lambda: list(PAPER_PARADIGMS))
    epochs: list[int] = field(default_factory=lambda: [5, 10])  # one run of max(epochs); earlier columns on the way
    batch_size: int = 128
    bn: str = "update"  # update: BN running statistics update, as torch train mode under peft; freeze
    # the targets (which layers a method touches) of the package's models
    prune_heads: bool = False  # ViT: also prune whole attention heads of the last block (our addition)
    # reference: the classifier is a pruning target where the reference prunes it (the ViT's head, not the
    # ResNet's Linear); true: on both models; false: on neither (the forget class's logit row is never zeroed)
    prune_classifier: str = "reference"
    vit_lora_targets: str = "reference"  # reference: head adapter only (what ran in the paper); intended: out-proj + head
    prefix_cache: str = "auto"  # auto: train only the suffix on cached prefix features when exact; off
    prefix_cache_max_gb: float = 8.0  # host memory the cached features may take; larger -> uncached
    precision: str = "float32"  # bfloat16: bfloat16 compute, float32 master weights (for GPUs/TPUs)


# The string options and their allowed values (``config.CHOICES`` reads them from here).
UNLEARN_CHOICES: dict[str, tuple[str, ...]] = {
    "bn": ("update", "freeze"),
    "vit_lora_targets": ("reference", "intended"),
    "prune_classifier": ("reference", "true", "false"),
    "prefix_cache": ("auto", "off"),
    "precision": ("float32", "bfloat16"),
}


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
        >>> check_unlearn(UnlearnConfig(prefix_cache_max_gb=1)).prefix_cache_max_gb
        1.0
    """
    for name, tp in typing.get_type_hints(UnlearnConfig).items():
        setattr(u, name, typed(name, getattr(u, name), tp, where, UNLEARN_CHOICES.get(name, ())))
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
        (u.batch_size >= 1, "unlearn.batch_size must be >= 1"),
        (u.prefix_cache_max_gb > 0, "unlearn.prefix_cache_max_gb must be > 0"),
    ]
