"""The library's front door: unlearn a set of samples from *your* Keras model, and measure it.

``unlearn`` runs any registered method (``methods.names()``: the paper's paradigms, the baselines,
NegGrad+, SCRUB, yours) on any functional or Sequential Keras 3 model, with NumPy arrays (or a
``keras.utils.PyDataset``) in the model's own input domain: nothing is normalised behind your back.
``evaluate`` computes every metric the toolkit has from a model and arrays. ``find_targets``
says which layers a method will prune, wrap with adapters and train in full, and which it cannot
wrap. The command (``python -m prunelora_keras.run``) runs the same methods through the same
``unlearning.prepare_method``.

Example:
    >>> import keras, numpy as np, prunelora_keras as plk  # doctest: +SKIP
    >>> model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)  # doctest: +SKIP
    >>> result = plk.unlearn(model, retain=(x_r, y_r), forget=(x_f, y_f), method="pruned_lora", epochs=5)  # doctest: +SKIP
    >>> scores = plk.evaluate(result.model, retain=(x_r, y_r), forget=(x_f, y_f), test=(x_t, y_t))  # doctest: +SKIP
    >>> result.model.save("unlearned.keras")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from prunelora_keras.api.checks import (chance_warnings, forgotten_classes, labelled_arrays, require_epochs,
                                        require_logits, split_test)
from prunelora_keras.api.targets import FoundTargets, find_targets  # noqa: F401  (re-exported: plk.find_targets)
from prunelora_keras.models.layers import FastConv2D, FastDepthwiseConv2D, FastMaxPool2D, FlatDense
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.data.datasets import Subset
from prunelora_keras.evaluation.evaluate import Reference, evaluate_arrays
from prunelora_keras.models.lora import matches_any, replace_layers, with_fast_layers
from prunelora_keras.methods.base import MethodContext, Targets
from prunelora_keras.evaluation.metrics import accuracy_pct, add_avg_gap
from prunelora_keras.methods import registry
from prunelora_keras.methods.hparams import HParams, check_hparams
from prunelora_keras.methods.builtin_hparams import MOVED
from prunelora_keras.methods.options import UnlearnConfig, check_unlearn, did_you_mean
from prunelora_keras.training.inference import predict_inputs
from prunelora_keras.models.pruning import PruneResult, prune_units, sparsity_report
from prunelora_keras.evaluation.relearn import relearn_plan
from prunelora_keras.evaluation.settings import EvalConfig, check_eval
from prunelora_keras.training.loop import EpochStats
from prunelora_keras.training.bn import set_bn_policy
from prunelora_keras.methods.prepare import prepare_method

CHANCE_SAMPLE = 2000  # D_r images the chance check before unlearning looks at (one forward pass)

__all__ = ["UnlearnResult", "FoundTargets", "copy_model", "evaluate", "find_targets", "prune", "unlearn",
           "unlearn_options"]

Data = Any  # (x, y) arrays, or a keras.utils.PyDataset of (x, y) batches


@dataclass
class UnlearnResult:
    """What ``unlearn`` returns.

    Attributes:
        model: the unlearned model: a new model (the input is untouched), adapters merged into
            plain Dense/Conv2D layers, so it saves and loads as an ordinary ``.keras`` file.
        method: the method's registry name.
        history: per epoch ``{"epoch", "loss", "accuracy", "seconds", ...}``.
        trainable_params: how many values trained.
        sparsity: percent of zero weights in the pruning targets' kernels (0 if nothing pruned).
        seconds: wall time of ``unlearn`` (preparation, compilation and training).
        seconds_per_epoch: mean training time per epoch, compilation excluded.
        targets: the layers the method pruned / wrapped / trained in full.
        not_wrappable: layers LoRA could not wrap (frozen under the LoRA methods).
        diagnostics: what pruning zeroed (per layer; the classifier's rows; the forget rows).
        description: the method's one-line account of what it trained.
        warnings: lines about the input (``chance_warnings``: the model was at chance on D_r before
            unlearning, so nothing it is scored on afterwards means anything).
    """

    model: keras.Model
    method: str
    history: list[dict[str, Any]]
    trainable_params: int
    sparsity: float
    seconds: float
    seconds_per_epoch: float
    targets: Targets
    not_wrappable: dict[str, str]
    diagnostics: dict[str, Any]
    description: str
    warnings: list[str] = dataclasses.field(default_factory=list)


def unlearn_options(method: str = "pruned_lora", **options: Any) -> tuple[UnlearnConfig, HParams]:
    """The shared options and method ``method``'s hyperparameters, defaults with ``options`` replaced,
    validated: each keyword is either a shared option (a field of ``options.UnlearnConfig``:
    ``batch_size``, ``bn``, ``precision``, ...) or one of the method's hyperparameters (its
    ``Method.hparams`` dataclass: ``lr``, ``rank``, ``amount``, ...).

    Args:
        method: a registered method (``methods.names()``).
        **options: shared options and the method's hyperparameters, by name.
    Returns:
        (``UnlearnConfig``, the method's hyperparameters), checked by ``options.check_unlearn`` and
        ``hparams.check_hparams`` (the command's own validation): ValueError with one line for an
        unknown name, a value of the wrong type, outside its allowed values or out of range.

    Example:
        >>> shared, h = unlearn_options("lora", rank=4, batch_size=64)
        >>> (h.rank, h.alpha, shared.batch_size)
        (4, 16.0, 64)
    """
    cls = registry.get(method).hparams
    shared = {f.name for f in dataclasses.fields(UnlearnConfig)} - {"paradigms", "epochs"}
    own = {f.name for f in dataclasses.fields(cls)}
    for name in sorted(set(options) - shared - own):
        if name in MOVED and MOVED[name].startswith(f"{method}."):
            hint = f": pass {MOVED[name].split()[0].partition('.')[2]}=... (each method owns its hyperparameters)"
        elif name in MOVED:
            hint = f": it is now {MOVED[name]}, not a hyperparameter of {method}"
        else:
            hint = did_you_mean(name, shared | own)
        raise ValueError(f"unknown option {name!r} for method {method!r}{hint}; its hyperparameters: "
                         f"{', '.join(sorted(own)) or 'none'}; shared options: {', '.join(sorted(shared))}")
    opts = check_unlearn(dataclasses.replace(UnlearnConfig(), **{k: v for k, v in options.items() if k in shared}))
    return opts, check_hparams(cls, {k: v for k, v in options.items() if k in own and k not in shared})


def copy_model(model: keras.Model) -> keras.Model:
    """A new functional/Sequential model with ``model``'s architecture and a copy of its weights.

    Args:
        model: a functional or Sequential Keras model.
    Returns:
        the copy (layers rebuilt from their configs, weights copied by layer name).

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")])
        >>> c = copy_model(m)
        >>> c is not m and all((a == b).all() for a, b in zip(c.get_weights(), m.get_weights()))
        True
    """
    return replace_layers(model, lambda layer: None)


def prune(model: keras.Model, targets: Sequence[str] | None = None, amount: float = 0.5,
          mode: str = "reference") -> tuple[keras.Model, PruneResult]:
    """A pruned copy of ``model``: the lowest-L2 ``amount`` of output units of each target zeroed.

    Args:
        model: any functional or Sequential Keras model (not modified).
        targets: patterns of the layers to prune (default: ``find_targets``' pruning targets).
        amount: the fraction of output units (channels, neurons) zeroed per layer.
        mode: "reference" (zeros once) or "persistent" (the returned masks are to be enforced,
            e.g. with ``pruning.PruneMasks`` in a plain ``model.fit``).
    Returns:
        (the pruned copy, the ``PruneResult`` with its masks).

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
        >>> pruned, result = prune(m, ["a"])
        >>> int((pruned.get_layer("a").kernel.numpy() == 0).all(axis=0).sum())
        4
    """
    copy = copy_model(model)
    targets = find_targets(copy).targets.prune if targets is None else list(targets)
    return copy, prune_units(copy, targets, amount, mode=mode)


SPEED_LAYERS = (FastConv2D, FastDepthwiseConv2D, FastMaxPool2D, FlatDense)


def _with_callers_layer_types(out: keras.Model, model: keras.Model) -> keras.Model:
    """``out`` with each of the package's speed layers (``FastConv2D``, ``FlatDense``, which merging
    adapters produces) back to the caller's own layer type: the result loads without this package."""
    own = {layer.name: type(layer) for layer in model.layers}

    def replace(layer):
        cls = own.get(layer.name)
        if isinstance(layer, SPEED_LAYERS) and cls is not None and cls is not type(layer):
            return cls.from_config(layer.get_config())
        return None

    if not any(isinstance(layer, SPEED_LAYERS) for layer in out.layers):
        return out
    return replace_layers(out, replace)


def checked_inputs(model: keras.Model, retain: Data, forget: Data) -> tuple[np.ndarray, ...]:
    """(x_r, y_r, x_f, y_f, classes) for ``unlearn`` and the pools, after the refusals of
    ``checks``: a model that outputs logits, labels in range, neither set empty."""
    num_classes = require_logits(model)
    x_r, y_r = labelled_arrays(retain, "retain", num_classes)
    x_f, y_f = labelled_arrays(forget, "forget", num_classes)
    require_logits(model, x_r[:32])
    return x_r, y_r, x_f, y_f, num_classes


def unlearn(model: keras.Model, retain: Data, forget: Data, method: str = "pruned_lora", *, epochs: int = 10,
            seed: int = 0, targets: Sequence[str] | None = None, lora_targets: Sequence[str] | None = None,
            train_in_full: Sequence[str] | None = None, classifier: str | None = None, verbose: bool = True,
            on_epoch_end: Callable[[EpochStats], None] | None = None, **options: Any) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` with a registered method; the input model is not changed.

    Args:
        model: a trained functional or Sequential Keras 3 classifier that outputs logits.
        retain, forget: D_r and D_f as (x, y) NumPy arrays or ``keras.utils.PyDataset``s, x in the
            model's own input domain (as it was trained; no normalisation is added), y integer
            labels (or one-hot).
        method: a name from ``methods.names()`` (default PruneLoRA, "pruned_lora").
        epochs: training epochs of the method.
        seed: adapter initialisation, data order, dropout, random labels.
        targets, lora_targets, train_in_full, classifier: see ``find_targets`` (found when not given).
        verbose: progress lines on stderr.
        on_epoch_end: called with each epoch's ``EpochStats``.
        **options: the shared options (``batch_size``, ``bn``, ``precision``, ...) and the method's own
            hyperparameters (``lr``, ``rank``, ``amount``, ...: its ``Method.hparams``; docs/methods.md
            lists them), checked by ``unlearn_options``.
    Returns:
        ``UnlearnResult``.
    Raises:
        ValueError: (one line, before any work) a model that outputs probabilities rather than
            logits (``checks.require_logits``: rebuild its head without the activation), labels
            outside the model's classes or not integers, an empty set, ``epochs`` < 1, an unknown
            or invalid option.
    Warns:
        ChanceLevelWarning: before training, when the model is at chance on (a sample of) D_r:
            train it first (``UnlearnResult.warnings`` keeps the line).

    Example:
        >>> result = unlearn(model, (x_r, y_r), (x_f, y_f), "scrub", epochs=3)  # doctest: +SKIP
        >>> result.model.save("scrubbed.keras")  # doctest: +SKIP
    """
    start = time.perf_counter()
    opts, hparams = unlearn_options(method, **options)
    epochs = require_epochs(epochs)
    x_r, y_r, x_f, y_f, num_classes = checked_inputs(model, retain, forget)
    at_chance = untrained_warnings(model, x_r, y_r, seed)  # said before the training, not after it
    flags = {layer.name: layer.trainable for layer in model.layers}
    ctx, found = user_context(model, (x_r, y_r), (x_f, y_f), num_classes, opts, hparams, seed, epochs, targets=targets,
                              lora_targets=lora_targets, train_in_full=train_in_full, classifier=classifier)
    prep = prepare_method(method, ctx, verbose=verbose)
    if found.not_wrappable and prep.plan.uses_lora and verbose:  # reported, never silently skipped
        print(f"{method}: no adapter for {', '.join(f'{n} ({w})' for n, w in list(found.not_wrappable.items())[:6])}"
              f"{' ...' if len(found.not_wrappable) > 6 else ''}: frozen", file=sys.stderr, flush=True)
    history = prep.fit(epochs, opts.batch_size, False, on_epoch_end)
    out = _with_callers_layer_types(prep.plan.eval_model(), model)
    for layer in out.layers:  # the caller's trainable flags back (the BatchNorm policy and Keras's fit change them)
        if layer.name in flags:
            layer.trainable = flags[layer.name]
    pruned_names = [layer.name for layer in out.layers if matches_any(layer.name, found.targets.prune)]
    sparsity = 100.0 * sparsity_report(out, pruned_names)["overall"]["zero_weights"] if prep.plan.pruned else 0.0
    return UnlearnResult(out, method, [dataclasses.asdict(h) for h in history], prep.plan.trainable_params, sparsity,
                         time.perf_counter() - start, float(np.mean([h.seconds for h in history])) if history else 0.0,
                         found.targets, found.not_wrappable, prep.diagnostics, prep.plan.description, at_chance)


def untrained_warnings(model: keras.Model, x: np.ndarray, y: np.ndarray, seed: int = 0,
                       sample: int = CHANCE_SAMPLE) -> list[str]:
    """``chance_warnings`` for a model about to be unlearned, on a seeded sample of D_r (one forward pass).

    Why: an untrained model (or one whose BatchNorm moving statistics never caught up: Keras's default
    momentum 0.99 after a short ``fit``) unlearns for minutes and only ``evaluate`` then says its
    scores mean nothing. Issued as a ``ChanceLevelWarning`` before any training.

    Args:
        model: the model about to be unlearned (not modified).
        x, y: D_r, checked (``labelled_arrays``).
        seed: seeds the sample.
        sample: how many D_r images the forward pass looks at (all, when fewer).
    Returns:
        ``chance_warnings``' lines: one when the model is at chance on the sample, else none.

    Example:
        >>> untrained_warnings(model, x_r, y_r)  # doctest: +SKIP
        ['the original model is at chance on the retained data (10.1% against 11.2% ...']
    """
    rows = np.sort(np.random.default_rng([seed, 5]).choice(len(y), min(sample, len(y)), replace=False))
    acc = accuracy_pct(predict_inputs(model, x[rows], 256), y[rows])
    return chance_warnings({"original": acc}, y[rows])


def user_context(model: keras.Model, retain: tuple[np.ndarray, np.ndarray], forget: tuple[np.ndarray, np.ndarray],
                 num_classes: int, opts: UnlearnConfig, hparams: HParams, seed: int, epochs: int,
                 **target_options: Any) -> tuple[MethodContext, FoundTargets]:
    """``unlearn``'s (and each ``unlearn_pool`` member's) ``MethodContext`` for ``seed``: a copy of
    ``model`` made after ``keras.utils.set_random_seed(seed)``, its BatchNorm policy applied, its
    targets found (``find_targets(**target_options)``); inputs in the model's own domain. The copy's
    plain Dense (on tokens), Conv2D, DepthwiseConv2D and MaxPooling2D layers are the package's faster
    equivalents (``with_fast_layers``); ``unlearn`` gives the caller's layer types back."""
    keras.utils.set_random_seed(seed)
    work = with_fast_layers(model)
    work = copy_model(model) if work is model else work
    set_bn_policy(work, opts.bn)
    found = find_targets(work, prune_classifier=opts.prune_classifier, **target_options)
    (x_r, y_r), (x_f, y_f) = retain, forget
    classwise = set(np.unique(y_f)).isdisjoint(set(np.unique(y_r)))
    ctx = MethodContext(model=work, options=opts, hparams=hparams, retain=Subset(x_r, y_r), forget=Subset(x_f, y_f),
                        num_classes=num_classes, preprocess=Preprocess(), seed=seed, targets=found.targets,
                        drop_last=False, eval_batch_size=256, epochs=epochs,
                        forget_classes=tuple(int(c) for c in np.unique(y_f)) if classwise else ())
    return ctx, found


def evaluate(model: keras.Model, retain: Data, forget: Data, test: Data, *, reference: keras.Model | None = None,
             original: keras.Model | None = None, test_forget: Data | None = None, seed: int = 0,
             batch_size: int = 256, relearn_max_steps: int = 200, relearn_fraction: float = 0.1,
             relearn_lr: float = 1e-3, relearn_forget_share: float = 0.0) -> dict[str, Any]:
    """Every metric of an unlearned ``model``, from arrays in the model's own input domain.

    Args:
        model: the model to score (not modified; scored through a copy with the package's faster layers,
            ``with_fast_layers``, where it has Keras's Conv2D, DepthwiseConv2D, MaxPooling2D or token Dense).
        retain, forget: D_r and D_f, as given to ``unlearn``.
        test: held-out data: TA, and the attacks' non-members. The whole test set may be passed: the
            samples of classes that D_f holds and D_r lacks (class-wise forgetting) are left out of TA
            and the attacks (a forgotten class scores 0 by design) and, unless ``test_forget`` is given,
            serve as held-out D_f; ``"notes"`` says so, ``"test_size"`` counts what TA was taken on.
        reference: a model retrained without D_f: adds Avg. Gap and ToW (the distance to it),
            CKA of the penultimate features on D_f and on ``test`` (``cka_forget``, ``cka_retain``) and
            RMIA with it as the reference model (``MIA_rmia_auc``: D_f against half of the unseen images of
            its classes, the other half the population: the forgotten classes' test samples class-wise,
            else ``test``; 50 reads "as unseen as unseen images"; ``MIA_rmia_tpr_1pct``).
        original: the model before unlearning: adds relearn time (``relearn_steps``: fine-tuning
            steps on D_r plus ``relearn_fraction`` of D_f until the rest of D_f is back at the
            original's accuracy minus 10 points, capped at ``relearn_max_steps``), when D_f's classes are
            gone from D_r; forgetting samples of classes D_r keeps, ``"notes"`` says why it is not measured.
        test_forget: held-out samples of the forgotten classes: adds ``probe_forget_acc_test``.
        seed, batch_size: the attacks' and probes' seed; the inference batch.
        relearn_max_steps, relearn_fraction, relearn_lr: the relearning fine-tune.
        relearn_forget_share: 0: the D_f sample joins D_r's stream once; in (0, 1): it is repeated
            to about this share of the stream (a D_f-heavy relearning attack, for large D_r).
    Returns:
        {metric: value}: UA, RA, TA, MIA_<attack> and attack_acc_/attack_degenerate_<attack>,
        probe_forget_acc, and where given the reference / original metrics above. Percent,
        except CKA in [0, 1] and ToW in [0, 1]. ``"warnings"``: one line per model (unlearned,
        reference, original) within a few points of chance on D_r (``checks.chance_warnings``,
        also issued as a ``ChanceLevelWarning``): its scores say nothing. ``"notes"``: what was
        done to the inputs (the forgotten classes' test samples set aside); ``"test_size"``.
    Raises:
        ValueError: as ``unlearn`` (probability outputs of any of the models, bad labels, empty
            sets), or a reference/original with another number of classes.

    Example:
        >>> scores = evaluate(result.model, (x_r, y_r), (x_f, y_f), (x_t, y_t), reference=retrained)  # doctest: +SKIP
        >>> scores["UA"], scores["avg_gap"]  # doctest: +SKIP
    """
    check_eval(EvalConfig(relearn_max_steps=relearn_max_steps, relearn_fraction=relearn_fraction, relearn_lr=relearn_lr,
                          relearn_forget_share=relearn_forget_share), where="")  # bad options: refused before any work
    num_classes = require_logits(model)
    sets = {"retain": Subset(*labelled_arrays(retain, "retain", num_classes)),
            "forget": Subset(*labelled_arrays(forget, "forget", num_classes))}
    classes_gone = forgotten_classes(sets["retain"].y, sets["forget"].y)  # none: random or sample forgetting
    kept, gone, note = split_test(*labelled_arrays(test, "test", num_classes), classes_gone)
    sets["test_retain"] = Subset(*kept)
    if test_forget is not None:
        sets["test_forget"] = Subset(*labelled_arrays(test_forget, "test_forget", num_classes))
    elif gone is not None:
        sets["test_forget"] = Subset(*gone)
    sample = sets["retain"].x[:32]
    require_logits(model, sample)
    for what, other in (("reference", reference), ("original", original)):
        if other is not None and require_logits(other, sample, what) != num_classes:
            raise ValueError(f"the {what} model has {other.output_shape[-1]} outputs, the model {num_classes}: "
                             "pass models of the same classes")
    # the passes and the relearn fine-tune on copies with the package's faster layers (same weights and
    # outputs): with Keras's DepthwiseConv2D a MobileNetV3Small's forward pass is 8.5x slower on XLA:CPU
    model, reference, original = (None if m is None else with_fast_layers(m) for m in (model, reference, original))
    common = {"seed": seed, "batch_size": batch_size}
    ref = Reference()
    rows = []
    if reference is not None:
        r = evaluate_arrays(reference, sets, num_classes, **common)
        ref.retrain_features = {k: r.features[k] for k in ("forget", "test_retain")}
        ref.retrain_logits = {k: r.logits[k] for k in ("forget", "test_retain", "test_forget") if k in r.logits}
        rows.append({"paradigm": "retrain", "epochs": 0, **r.metrics})
    relearn_wanted = original is not None and relearn_max_steps > 0
    # class-wise only: where D_f's classes stay in D_r a model that generalises is at the target already
    if relearn_wanted and len(sets["forget"]) >= 2 and classes_gone:
        ref.relearn = relearn_plan(sets["retain"], sets["forget"], relearn_fraction, seed, relearn_forget_share)
        ref.relearn_target = accuracy_pct(predict_inputs(original, ref.relearn.heldout.x, batch_size),
                                          ref.relearn.heldout.y) - 10.0
    relearn = {"lr": relearn_lr, "batch_size": 128, "max_steps": relearn_max_steps, "eval_every": 5}
    metrics = evaluate_arrays(model, sets, num_classes, reference=ref, relearn=relearn, **common).metrics
    if rows:
        row = {"paradigm": "unlearned", "epochs": 0, **metrics}
        add_avg_gap(rows + [row])
        metrics.update(avg_gap=row["avg_gap"], tow=row["tow"])
    retain_acc = {"unlearned": metrics["RA"], **({"reference": rows[0]["RA"]} if rows else {})}
    if original is not None:
        retain_acc["original"] = accuracy_pct(predict_inputs(original, sets["retain"].x, batch_size), sets["retain"].y)
    metrics["warnings"] = chance_warnings(retain_acc, sets["retain"].y)
    metrics["notes"] = [note] if note else []
    if relearn_wanted and not classes_gone:
        metrics["notes"].append("relearn time not measured: D_f's classes stay in D_r (random or sample forgetting), "
                                "where a model that generalises, Retrain first, is at the target already")
    metrics["test_size"] = len(sets["test_retain"])
    return metrics
