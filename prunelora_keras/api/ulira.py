"""U-LiRA on a user's own model and data: shadow pools trained, unlearned and attacked.

The test itself (the per-example Gaussians, the likelihood ratio, the scores) is
``evaluation/ulira.py``; this module trains what it needs with the compiled pools
(``PoolTrainer``), following Hayes et al. 2024 (arXiv 2403.01218):

- **Shadow originals**: S models from scratch, each on one of ``paired_halves`` (half of the forget
  candidates C and half of the other examples, complementary in pairs, seeded).
- **Retrain shadows**: S models from scratch on each half without its candidates (the models the
  unlearned ones should be indistinguishable from), and a second such pool on other seeds, the
  *floor*: Retrain tested against Retrain, what a perfect unlearner scores at this S.
- **Method shadows**: per method, shadow k's original unlearns C within its half (the method's
  registered recipe, its own seed per shadow): one pool per method.

Attacks (``ULiRAReport``): per method, candidates that shadow k trained on and unlearned
(positives) against Retrain shadow k on the same candidates (negatives), Gaussians fitted on the
other shadows (leave-one-out: shadow k is never in the fit that scores it), the IN side from the
method's shadows that unlearned x, the OUT side from every Retrain shadow (none trained on x).
The original pool in the same role says how vulnerable the candidates were before unlearning;
the floor pool, what indistinguishable looks like. On a seeded sample of retained examples, the
method's own shadows that trained on an example against those that did not (LiRA's membership
test on the unlearned models): does unlearning expose what it kept? Deep Unlearn
(xcadet/deepunlearn, ``munl/lira/consolidate_predictions.py``) fits its OUT side on the method's
own shadows that never saw x; we fit it on Retrain shadows, as the question is "unlearned or
retrained", and keep the method's never-saw-x shadows for the retain-side test.

Cost: 3 x S scratch trainings (originals, Retrain, floor) shared by every method, plus S runs of
each method; every pool is one compiled step over its S members.

Example:
    >>> report = plk.ulira(lambda seed: my_model(), x, y, candidates, methods=["finetune", "lora"],
    ...                    shadows=16, pretrain=TrainConfig(epochs=20, optimizer="adam", lr=1e-3),
    ...                    epochs=5)  # doctest: +SKIP
    >>> report.rows()["lora"]["ulira_acc"]  # 0.5: indistinguishable from retraining  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunelora_keras.api.checks import checked_labels, require_epochs
from prunelora_keras.api.pools import method_pool, scratch_pool
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.datasets import Subset
from prunelora_keras.evaluation.ulira import (ULiRAResult, forget_attack, logit_confidence, paired_halves,
                                              retain_attack)
from prunelora_keras.methods import registry
from prunelora_keras.methods.base import MethodContext
from prunelora_keras.training.pool_trainer import PoolTrainer, member_seeds
from prunelora_keras.training.recipe import TrainConfig

Values = tuple[list, list]  # a member's (trainable, non-trainable) values, in its model's order
# name, make_pool, epochs, inputs -> (the pool's logits on inputs (S, N, classes), each member's values)
PoolRunner = Callable[[str, Callable[[], PoolTrainer], int, np.ndarray], tuple[np.ndarray, list[Values]]]
# method, shadow k's original model, its D_r, its D_f, the member's seed -> the method's context
ContextMaker = Callable[[str, keras.Model, Subset, Subset, int], MethodContext]
SEED_TAGS = {"original": "ulira-o", "retrain": "ulira-r", "floor": "ulira-f", "method": "ulira-u"}


@dataclass
class ULiRAReport:
    """What ``ulira`` returns.

    Attributes:
        forget: {"original", "retrain" (the floor), each method: the U-LiRA result on the forget
            candidates}.
        retain: {"original", each method: LiRA membership on the retained sample}.
        halves: (S, N) which examples each shadow trained on; ``candidates``: (N,) the forget
            candidates C; ``retain_sample``: indices of the retained examples attacked.
        seconds: {pool: training seconds (0 for a pool a runner reused)}.
        failed: {method: why} for methods whose shadow pool diverged (no scores; the others run on).
    """

    forget: dict[str, ULiRAResult]
    retain: dict[str, ULiRAResult]
    halves: np.ndarray = field(repr=False)
    candidates: np.ndarray = field(repr=False)
    retain_sample: np.ndarray = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def rows(self) -> dict[str, dict[str, float]]:
        """{model: ``ulira_acc``, its interval, TPR at each FPR, ``ulira_acc_retain``} (percent-free
        fractions in [0, 1]); "retrain" is the floor."""
        out: dict[str, dict[str, float]] = {}
        for name, r in self.forget.items():
            row = {"ulira_acc": r.acc, "ulira_acc_lo": r.acc_interval[0], "ulira_acc_hi": r.acc_interval[1],
                   **{f"ulira_tpr_at_{f:g}": t for f, t in r.tpr_at_fpr.items()},
                   "ulira_examples": r.scored_examples}
            if name in self.retain:
                row["ulira_acc_retain"] = self.retain[name].acc
            out[name] = row
        return out


def fit_pool(name: str, make_pool: Callable[[], PoolTrainer], epochs: int, inputs: np.ndarray
             ) -> tuple[np.ndarray, list[Values]]:
    """The default ``PoolRunner``: build, train ``epochs`` epochs, read the logits and the members.

    Args:
        name: the pool's name (unused here; a runner that saves pools names its files by it).
        make_pool: builds the untrained pool.
        epochs: training epochs.
        inputs: the stored inputs to read the pool's logits on.
    Returns:
        (logits (S, N, classes), each member's (trainable, non-trainable) values).

    Example:
        >>> logits, values = fit_pool("original", lambda: pool, 10, x_query)  # doctest: +SKIP
    """
    pool = make_pool()
    pool.fit(epochs)
    return pool.logits(inputs), [pool.member_values(k) for k in range(pool.k)]


def member_model(build_model: Callable[[int], keras.Model], seed: int, values: Values) -> keras.Model:
    """A new model from ``build_model(seed)`` holding a pool member's ``values``.

    Args:
        build_model: seed -> a new model of the pool's architecture.
        seed: passed to ``keras.utils.set_random_seed`` and ``build_model``.
        values: the member's (trainable, non-trainable) values (``PoolTrainer.member_values(k)``).
    Returns:
        the model; ValueError when its variables do not match ``values``.

    Example:
        >>> shadow = member_model(lambda s: my_model(), 0, pool.member_values(3))  # doctest: +SKIP
    """
    keras.utils.set_random_seed(int(seed))
    model = build_model(int(seed))
    for variables, arrays in zip((model.trainable_variables, model.non_trainable_variables), values):
        if len(variables) != len(arrays):
            raise ValueError(f"a pool member has {len(arrays)} values for {len(variables)} variables: build_model "
                             "must build the architecture the pool trained")
        for v, a in zip(variables, arrays):
            v.assign(np.asarray(a))
    return model


def ulira(build_model: Callable[[int], keras.Model], x: np.ndarray, y: np.ndarray, candidates: np.ndarray, *,
          methods: Sequence[str], shadows: int = 16, pretrain: TrainConfig, retrain: TrainConfig | None = None,
          epochs: int = 10, batch_size: int = 64, num_classes: int | None = None, preprocess: Preprocess = Preprocess(),
          seed: int = 0, retain_sample: int = 500, fixed_variance: bool = False, bootstrap: int = 200,
          context: ContextMaker | None = None, run_pool: PoolRunner | None = None,
          mode: str = "auto", devices: Sequence[Any] | None = None, verbose: bool = True,
          **options: Any) -> ULiRAReport:
    """U-LiRA (Hayes et al. 2024) for ``methods`` on a user's own architecture and data.

    Args:
        build_model: seed -> a new, untrained model that outputs logits (called after
            ``keras.utils.set_random_seed(seed)``).
        x, y: the training data (the model's own input domain; ``preprocess`` applies) and integer labels.
        candidates: (N,) booleans, the forget candidates C (a class's examples, or a random sample).
        methods: registered methods (``methods.names()``; "retrain" is the floor and skipped here).
        shadows: S, even and >= 6 (an example's IN side keeps S / 2 - 1 scores once the target's
            shadow is held out, and a Gaussian needs two); cost: 3 S scratch trainings plus S runs
            of each method.
        pretrain: the shadow originals' recipe; ``retrain``: the Retrain shadows' (default ``pretrain``).
        epochs: each method's training epochs.
        batch_size: every pool's batch.
        num_classes: the classifier's width (default ``max(y) + 1``).
        preprocess: how ``x`` becomes the models' input (``Preprocess()``: floats as they are).
        seed: the halves, the member seeds, the retained sample and the bootstrap.
        retain_sample: how many retained examples the retain-side test attacks.
        fixed_variance, bootstrap: as ``evaluation.ulira.ulira_test``.
        context: builds a method's ``MethodContext`` for shadow k (default: ``plk.unlearn``'s, with
            ``options``); the command passes its own.
        run_pool: trains (or reuses) one pool (default ``fit_pool``; the command's saves, reuses
            and resumes pools in the run folder).
        mode, devices: how each pool maps and shards its S axis (``PoolTrainer``).
        verbose: progress lines.
        **options: shared options and hyperparameters for the default ``context`` (``plk.unlearn_options``).
    Returns:
        ``ULiRAReport``.
    Raises:
        ValueError: S odd or < 6, no candidate or nothing else, labels outside the classes,
            ``retain_sample`` < 1, ``bootstrap`` < 0, an unknown method or option (all before anything trains).

    Example:
        >>> report = plk.ulira(build, x, y, y == 3, methods=["lora"], shadows=8,
        ...                    pretrain=TrainConfig(epochs=10, optimizer="adam", lr=1e-3))  # doctest: +SKIP
        >>> round(report.rows()["retrain"]["ulira_acc"], 2)  # the floor, about 0.5  # doctest: +SKIP
    """
    num_classes = int(num_classes or int(np.max(y)) + 1)
    y = checked_labels(y, "the training data", num_classes)
    candidates = np.asarray(candidates, bool)
    require_epochs(epochs)
    if candidates.shape != y.shape or not candidates.any() or candidates.all():
        raise ValueError("candidates must be one boolean per example, with at least one candidate and one other example")
    if shadows < 6 or shadows % 2:
        raise ValueError(f"shadows must be an even number >= 6, got {shadows}: with the target's pair held out, "
                         "each example needs two more shadows on each side to fit a Gaussian")
    if isinstance(retain_sample, bool) or not isinstance(retain_sample, (int, np.integer)) or retain_sample < 1:
        raise ValueError(f"retain_sample must be an integer >= 1, got {retain_sample!r}: the retain-side test attacks "
                         "that many retained examples")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0 (0: no confidence interval), got {bootstrap!r}")
    methods = [m for m in methods if m != "retrain"]
    if context is None:  # every method's options checked before anything trains
        from prunelora_keras.api.library import unlearn_options

        for name in methods:
            unlearn_options(name, **options)
    else:
        for name in methods:
            registry.get(name)
    halves = paired_halves(candidates.astype(int), shadows, seed)
    others = np.flatnonzero(~candidates & halves.any(0))
    sample = np.sort(np.random.default_rng([seed, 11]).choice(others, min(retain_sample, len(others)), replace=False))
    query = np.r_[np.flatnonzero(candidates), sample]
    run_pool, retrain = run_pool or fit_pool, retrain or pretrain
    context = context or _user_context(num_classes, epochs, preprocess, options)
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}

    def run(name: str, make: Callable[[], PoolTrainer], n_epochs: int) -> tuple[np.ndarray, list[Values]]:
        start = time.perf_counter()
        logits, values = run_pool(name, make, n_epochs, x[query])
        seconds[name] = time.perf_counter() - start
        return logit_confidence(logits, y[query]), values

    def scratch(tag: str, recipe: TrainConfig, rows: np.ndarray):
        seeds = member_seeds(seed, SEED_TAGS[tag], shadows)
        return lambda: scratch_pool(build_model, recipe, x, y, batch_size, num_classes, preprocess, seeds,
                                    rows=[np.flatnonzero(r) for r in rows], mode=mode, devices=devices,
                                    label=f"ulira {tag}", verbose=verbose)

    scores_o, originals = run("original", scratch("original", pretrain, halves), pretrain.epochs)
    scores_r, _ = run("retrain", scratch("retrain", retrain, halves & ~candidates), retrain.epochs)
    scores_f, _ = run("floor", scratch("floor", retrain, halves & ~candidates), retrain.epochs)
    origin_seeds = member_seeds(seed, SEED_TAGS["original"], shadows)
    seeds = member_seeds(seed, SEED_TAGS["method"], shadows)
    shadow_of = {s: k for k, s in enumerate(seeds)}
    forgets = halves[:, candidates]
    n_c = int(candidates.sum())
    kept = halves[:, sample]
    forget = {"original": forget_attack(scores_o[:, :n_c], scores_r[:, :n_c], forgets, fixed_variance=fixed_variance,
                                        bootstrap=bootstrap, seed=seed),
              "retrain": forget_attack(scores_f[:, :n_c], scores_r[:, :n_c], forgets, fixed_variance=fixed_variance,
                                       bootstrap=bootstrap, seed=seed)}
    retain = {"original": retain_attack(scores_o[:, n_c:], kept, fixed_variance=fixed_variance, bootstrap=bootstrap,
                                        seed=seed)}

    for name in methods:
        def make_context(member_seed: int, name: str = name) -> MethodContext:
            k = shadow_of[member_seed]
            model = member_model(build_model, origin_seeds[k], originals[k])
            keep, drop = halves[k] & ~candidates, halves[k] & candidates
            return context(name, model, Subset(x[keep], y[keep]), Subset(x[drop], y[drop]), member_seed)

        try:
            scores_m, _ = run(name, lambda name=name, make_context=make_context: method_pool(
                name, make_context, seeds, mode=mode, devices=devices, label=f"ulira {name}", verbose=verbose), epochs)
        except FloatingPointError as exc:  # one method's shadows diverged: it has no scores, the others still run
            failed[name] = str(exc)
            continue
        if not np.isfinite(scores_m).all():  # diverged in the last step: a finite loss, then weights that are not
            failed[name] = f"{name}: its shadows' outputs are not finite after training"
            continue
        forget[name] = forget_attack(scores_m[:, :n_c], scores_r[:, :n_c], forgets, fixed_variance=fixed_variance,
                                     bootstrap=bootstrap, seed=seed)
        retain[name] = retain_attack(scores_m[:, n_c:], kept, fixed_variance=fixed_variance, bootstrap=bootstrap,
                                     seed=seed)
    return ULiRAReport(forget, retain, halves, candidates, sample, seconds, failed)


def _user_context(num_classes: int, epochs: int, preprocess: Preprocess, options: dict[str, Any]) -> ContextMaker:
    """``plk.unlearn``'s context for a shadow: the shadow original itself (already a fresh model),
    its halves' D_r and D_f, the shared options and the method's hyperparameters."""
    from prunelora_keras.api.library import unlearn_options, user_context

    def make(name: str, model: keras.Model, retain: Subset, forget: Subset, seed: int) -> MethodContext:
        opts, hparams = unlearn_options(name, **options)
        ctx = user_context(model, (retain.x, retain.y), (forget.x, forget.y), num_classes, opts, hparams, seed,
                           epochs)[0]
        return dataclasses.replace(ctx, preprocess=preprocess)  # the pools' own preprocessing

    return make
