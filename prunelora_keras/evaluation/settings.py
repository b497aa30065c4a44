"""The evaluation's options (``EvalConfig``): the loss-attack samples, relearn time and the
many-model pools, apart from the unlearning options (``methods.options``) since no method reads
them. ``--set eval.<key>=...`` on the command, ``[eval]`` in a TOML file; ``check_eval`` is their
one validation. Imports neither Keras nor JAX (the command checks them before anything heavy).

Example:
    >>> check_eval(EvalConfig(models=4)).models_mode
    'auto'
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from prunelora_keras.methods.hparams import did_you_mean, typed


@dataclass
class EvalConfig:
    """How the command evaluates: the fields below, with their defaults."""

    mia_members: int = 9000  # loss_logreg: retain losses drawn at full scale (scaled down 9:5 on subsets)
    mia_nonmembers: int = 5000  # loss_logreg: remaining-class test losses drawn at full scale
    # relearn time (relearn.py): Adam on D_r plus this fraction of D_f, steps until the held-out rest of D_f is
    # back at the original's accuracy minus 10 points; capped at relearn_max_steps (0: no relearning)
    relearn_fraction: float = 0.1
    # 0: the D_f sample joins the stream once; in (0, 1): repeated to about this share of the stream
    relearn_forget_share: float = 0.0
    relearn_max_steps: int = 200
    relearn_eval_every: int = 5
    relearn_lr: float = 1e-3
    # many-model evaluation (pool_trainer.py, forgetting_quality.py): K models per pool, 0: off (--eval-models)
    models: int = 0
    models_mode: str = "auto"  # auto | vmap | map | loop: how a pool maps its K axis
    models_retain_sample: int = 1000  # KLoM on D_r: a seeded sample of this many retained images
    # U-LiRA (evaluation/ulira.py, api/ulira.py): S shadow models per pool, 0: off (--eval-ulira)
    ulira: int = 0
    ulira_retain_sample: int = 500  # the retain-side test: a seeded sample of this many retained images
    ulira_fixed_variance: bool = False  # one standard deviation per side, pooled over the examples (LiRA's option)
    ulira_bootstrap: int = 200  # resamples of the examples for the interval of ulira_acc (0: none)
    # the trained models' test accuracy with airbench's test-time views too (0: off, 1: mirror, 2: mirror +
    # translate), reported beside the plain accuracy (every metric of the tables stays plain)
    tta: int = 0


EVAL_CHOICES: dict[str, tuple[str, ...]] = {"models_mode": ("auto", "vmap", "map", "loop")}


def check_eval(e: EvalConfig, where: str = "eval.") -> EvalConfig:
    """The one validation of the evaluation options: types, choices and ranges.

    Args:
        e: the options.
        where: the prefix of each option's name in messages.
    Returns:
        ``e``, with lossless conversions applied in place (an int given for a float).
    Raises:
        ValueError: one line naming the option, the bad value and the fix.

    Example:
        >>> check_eval(EvalConfig(relearn_lr=1)).relearn_lr
        1.0
    """
    for name, tp in typing.get_type_hints(EvalConfig).items():
        setattr(e, name, typed(name, getattr(e, name), tp, where))
    for name, choices in EVAL_CHOICES.items():
        if getattr(e, name) not in choices:
            raise ValueError(f"{where}{name} = {getattr(e, name)!r} is not valid: choose one of {', '.join(choices)}"
                             f"{did_you_mean(getattr(e, name), choices)}")
    checks = [
        (e.mia_members >= 1 and e.mia_nonmembers >= 1, "mia_members and mia_nonmembers must be >= 1"),
        (0 < e.relearn_fraction < 1, "relearn_fraction must be in (0, 1)"),
        (0 <= e.relearn_forget_share < 1, "relearn_forget_share must be in [0, 1) (0: the D_f sample joins the stream once)"),
        (0 <= e.relearn_max_steps <= 1_000_000, "relearn_max_steps must be in 0..1000000 (0: no relearning)"),
        (e.relearn_eval_every >= 1, "relearn_eval_every must be >= 1"),
        (e.relearn_lr > 0, "relearn_lr must be > 0"),
        (e.models == 0 or 2 <= e.models <= 100_000,
         "models (--eval-models) must be 0 (off) or a number of models per pool from 2 to 100000"),
        (e.models_retain_sample >= 1, "models_retain_sample must be >= 1"),
        (e.ulira == 0 or (e.ulira >= 6 and e.ulira % 2 == 0 and e.ulira <= 100_000),
         f"ulira (--eval-ulira) must be 0 (off) or an even number of shadow models >= 6 (got {e.ulira}): shadows "
         "come in pairs of complementary halves, each example is in one of each pair, and with the target's "
         "pair held out a Gaussian needs two more"),
        (e.ulira_retain_sample >= 1, "ulira_retain_sample must be >= 1"),
        (e.ulira_bootstrap >= 0, "ulira_bootstrap must be >= 0 (0: no interval)"),
        (e.tta in (0, 1, 2), "tta must be 0 (off), 1 (mirror) or 2 (mirror + translate)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(where + message)
    return e


# where each evaluation option of the old flat ``unlearn`` section went
MOVED_TO_EVAL: dict[str, str] = {
    **{k: k for k in ("mia_members", "mia_nonmembers", "relearn_fraction", "relearn_max_steps", "relearn_eval_every",
                      "relearn_lr")},
    "eval_models": "models", "eval_models_mode": "models_mode", "eval_models_retain_sample": "models_retain_sample",
}
