"""Structured L2 pruning: whole output channels / units, and whole attention heads.

Semantics follow ``torch.nn.utils.prune.ln_structured(amount, n=2, dim=0)``: a unit is one
output channel (Conv2D) or output unit (Dense); its score is the L2 norm of its weights over all
other axes; ``round(amount * units)`` units are pruned (Python's round, half to even, as torch),
and the highest-scoring rest are kept (among equal scores, the lower index is kept first).
Only the kernel is masked unless the caller asks for the bias too.

Keras kernels put the output axis last ((kh, kw, in, out) and (in, out)), where torch puts it
first; the scores are the same numbers.

Two modes:
- ``reference``: zeros are written once and nothing is enforced afterwards (torch's
  ``prune.remove``): training may grow pruned weights back.
- ``persistent``: the masks are also returned, for ``Trainer(masks=...)`` to enforce after every
  optimiser step (gradients and weights both masked, so Adam moments and weight decay cannot
  revive a zero), and LoRA adapters on pruned layers get their unit/input masks set, so
  ``lora.merge`` keeps the zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from prunelora_keras.models.lora import matches_any

MODES = ("reference", "persistent")


def unit_scores(kernel: np.ndarray) -> np.ndarray:
    """L2 norm of each output unit (last axis) over every other axis."""
    k = np.asarray(kernel, dtype=np.float32)
    return np.sqrt(np.sum(np.square(k), axis=tuple(range(k.ndim - 1))))


def n_to_prune(amount: float, units: int) -> int:
    """torch's ``_compute_nparams_toprune`` for a float amount: round(amount * units)."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}")
    return round(amount * units)


def keep_mask(scores: np.ndarray, amount: float) -> np.ndarray:
    """1 for the units kept (highest scores), 0 for the ``round(amount * n)`` pruned."""
    n = len(scores)
    keep = n - n_to_prune(amount, n)
    order = np.argsort(-np.asarray(scores), kind="stable")  # descending, ties by lower index
    mask = np.zeros(n, np.float32)
    mask[order[:keep]] = 1.0
    return mask


def head_scores(qkv_kernel: np.ndarray, out_kernel: np.ndarray, num_heads: int) -> np.ndarray:
    """L2 norm of each attention head's slices of the fused q|k|v projection and the out-projection."""
    qkv = np.asarray(qkv_kernel, np.float32)
    out = np.asarray(out_kernel, np.float32)
    dim = out.shape[0]
    hd = dim // num_heads
    scores = np.zeros(num_heads, np.float32)
    for h in range(num_heads):
        cols = np.concatenate([np.arange(part * dim + h * hd, part * dim + (h + 1) * hd) for part in range(3)])
        scores[h] = np.sqrt(np.sum(qkv[:, cols] ** 2) + np.sum(out[h * hd:(h + 1) * hd] ** 2))
    return scores


@dataclass
class PruneResult:
    """What a pruning step zeroed (``prune_units``, ``prune_heads``, ``api.prune``).

    Attributes:
        masks: {variable path: 0/1 mask of the variable's shape}.
        unit_masks: {layer name: 0/1 mask over its output units}.
        mode: "reference" (zeros once) or "persistent" (``enforced()`` returns the masks to keep).
        adapter_gates: {layer name: (unit mask, input mask)} for LoRA adapters on pruned layers.
    """

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    unit_masks: dict[str, np.ndarray] = field(default_factory=dict)
    mode: str = "reference"
    # {layer name: (output-unit mask or None, input-feature mask or None)} for LoRA adapters
    adapter_gates: dict[str, tuple] = field(default_factory=dict)

    def enforced(self) -> dict[str, np.ndarray]:
        """The masks a Trainer must enforce: all of them in persistent mode, none in reference mode."""
        return dict(self.masks) if self.mode == "persistent" else {}


def _target_layers(model: keras.Model, targets: Sequence[str]) -> list:
    found = [layer for layer in model.layers
             if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
             and matches_any(layer.name, targets)]
    if not found:
        raise ValueError(f"no Dense or Conv2D layer name matches the pruning targets {list(targets)}")
    return found


def _apply(var, mask: np.ndarray, result: PruneResult) -> None:
    var.assign(np.asarray(var.numpy()) * mask.astype(var.dtype))
    prev = result.masks.get(var.path)
    result.masks[var.path] = mask if prev is None else prev * mask


def _record_gate(result: PruneResult, name: str, unit_mask=None, input_mask=None) -> None:
    old_unit, old_input = result.adapter_gates.get(name, (None, None))
    combine = lambda a, b: b if a is None else (a if b is None else a * b)  # noqa: E731
    result.adapter_gates[name] = (combine(old_unit, unit_mask), combine(old_input, input_mask))


def gate_adapters(model: keras.Model, result: PruneResult) -> list[str]:
    """Persistent mode: set the unit/input masks of the LoRA layers on pruned layers, so their
    update never reaches a pruned unit (call after ``lora.add_lora`` when pruning came first).
    Returns the names of the gated layers; does nothing in reference mode."""
    if result.mode != "persistent":
        return []
    gated = []
    for name, (unit_mask, input_mask) in result.adapter_gates.items():
        layer = model.get_layer(name)
        if not hasattr(layer, "unit_mask"):
            continue
        if unit_mask is not None:
            layer.unit_mask.assign(unit_mask.astype("float32"))
        if input_mask is not None:
            layer.input_mask.assign(input_mask.astype("float32"))
        gated.append(name)
    return gated


def prune_units(model: keras.Model, targets: Sequence[str], amount: float = 0.5, mode: str = "reference",
                include_bias: bool = False, result: PruneResult | None = None) -> PruneResult:
    """Zero the lowest-L2 output units of every Dense/Conv2D whose name matches ``targets``, IN PLACE.

    ``model``'s own variables change (``api.prune`` returns a pruned copy instead). Returns the
    ``PruneResult``: the masks (enforce them with ``PruneMasks`` in a plain ``fit``, or the
    trainer's ``masks``) and the unit masks per layer.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="a")])
        >>> result = prune_units(m, ["a"], 0.5)
        >>> int(result.unit_masks["a"].sum())
        3
    """
    if mode not in MODES:
        raise ValueError(f"pruning mode must be one of {MODES}, got {mode!r}")
    result = result or PruneResult(mode=mode)
    result.mode = mode
    for layer in _target_layers(model, targets):
        units = keep_mask(unit_scores(layer.kernel.numpy()), amount)
        _apply(layer.kernel, np.broadcast_to(units, layer.kernel.shape).copy(), result)
        if include_bias and layer.bias is not None:
            _apply(layer.bias, units.copy(), result)
        result.unit_masks[layer.name] = units * result.unit_masks.get(layer.name, 1.0)
        _record_gate(result, layer.name, unit_mask=units)
    gate_adapters(model, result)
    return result


class MaskConstraint(keras.constraints.Constraint):
    """A Keras constraint that multiplies a variable by a 0/1 mask (then applies ``previous``, if any).

    Keras's optimisers apply a variable's constraint after every update, inside the compiled train
    step on every backend, so a masked entry stays zero whatever the gradient, momentum or weight
    decay. ``PruneMasks`` installs these for the length of a ``fit``.

    Example:
        >>> import numpy as np
        >>> MaskConstraint(np.array([1.0, 0.0]))(np.array([3.0, 4.0])).tolist()
        [3.0, 0.0]
    """

    def __init__(self, mask, previous=None):
        self.mask = np.asarray(mask)
        self.previous = previous

    def __call__(self, w):
        w = keras.ops.multiply(w, keras.ops.cast(self.mask, w.dtype))
        return self.previous(w) if self.previous is not None else w


class PruneMasks(keras.callbacks.Callback):
    """Enforce pruning masks inside a plain ``model.fit``: when training begins, the pruned entries
    are zeroed and each masked variable gets a ``MaskConstraint`` (applied by the optimiser after
    every update, inside the compiled step, on every backend); when it ends, the variables' own
    constraints are restored. The package's compiled loop (``train.Trainer``) enforces masks itself.

    Args:
        masks: {variable path: 0/1 array of the variable's shape}, or a ``PruneResult``.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="a")])
        >>> m.compile("sgd", "mse")
        >>> result = prune_units(m, ["a"], 0.5, mode="persistent")
        >>> _ = m.fit(np.ones((8, 4)), np.ones((8, 2)), epochs=2, verbose=0, callbacks=[PruneMasks(result)])
        >>> int((m.get_layer("a").kernel.numpy() == 0).all(axis=0).sum())
        1
    """

    def __init__(self, masks: "dict[str, np.ndarray] | PruneResult"):
        super().__init__()
        self.masks = dict(masks.masks if isinstance(masks, PruneResult) else masks)
        self._saved: list = []

    def on_train_begin(self, logs=None):
        by_path = {v.path: v for v in self.model.variables}
        missing = sorted(set(self.masks) - set(by_path))
        if missing:
            raise ValueError(f"PruneMasks: the model has no variables {missing[:3]}")
        self._saved = []
        for path, mask in self.masks.items():
            var = by_path[path]
            self._saved.append((var, var.constraint))
            var.assign(keras.ops.multiply(var, keras.ops.cast(mask, var.dtype)))
            var.constraint = MaskConstraint(mask, var.constraint)

    def on_train_end(self, logs=None):
        for var, previous in self._saved:
            var.constraint = previous
        self._saved = []


def prune_heads(model: keras.Model, blocks: Sequence[str], num_heads: int, amount: float = 0.5,
                mode: str = "reference", result: PruneResult | None = None) -> PruneResult:
    """Zero whole attention heads of the named ViT blocks (``block11`` -> ``block11_attn_qkv``/``_attn_out``).

    A pruned head loses its q, k and v columns (kernel and bias) in the fused projection and its
    rows of the out-projection, so it contributes nothing.
    """
    if mode not in MODES:
        raise ValueError(f"pruning mode must be one of {MODES}, got {mode!r}")
    result = result or PruneResult(mode=mode)
    result.mode = mode
    for block in blocks:
        qkv, out = model.get_layer(f"{block}_attn_qkv"), model.get_layer(f"{block}_attn_out")
        dim = out.kernel.shape[0]
        hd = dim // num_heads
        heads = keep_mask(head_scores(qkv.kernel.numpy(), out.kernel.numpy(), num_heads), amount)
        per_feature = np.repeat(heads, hd)  # (dim,) over the heads' features
        qkv_cols = np.tile(per_feature, 3)  # (3 * dim,) q | k | v
        _apply(qkv.kernel, np.broadcast_to(qkv_cols, qkv.kernel.shape).copy(), result)
        if qkv.bias is not None:
            _apply(qkv.bias, qkv_cols.copy(), result)
        _apply(out.kernel, np.broadcast_to(per_feature[:, None], out.kernel.shape).copy(), result)
        result.unit_masks[f"{block}_heads"] = heads
        _record_gate(result, qkv.name, unit_mask=qkv_cols)
        _record_gate(result, out.name, input_mask=per_feature)
    gate_adapters(model, result)
    return result


def sparsity_report(model: keras.Model, layer_names: Sequence[str] | None = None) -> dict:
    """Fraction of zero weights and of all-zero output units per layer, and overall.

    Args:
        model: any Keras model; the kernels of its Dense/Conv2D layers are measured (for LoRA
            layers the effective, merged kernel).
        layer_names: only these layers (default: every Dense/Conv2D).
    Returns:
        ``{"layers": {name: {"zero_weights", "zero_units"}}, "overall": {...}}``, fractions in [0, 1];
        ``overall`` pools the listed layers.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="a")])
        >>> _ = prune_units(m, ["a"], 0.5)
        >>> sparsity_report(m)["overall"]["zero_units"]
        0.5
    """
    rows = {}
    zeros = total = zero_units = units = 0
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            continue
        if layer_names is not None and layer.name not in layer_names:
            continue
        # on the host (a LoRA layer's merge too): no program compiled per layer, no torch tensor that requires grad
        merged = getattr(layer, "merged_kernel_numpy", None)
        kernel = merged() if merged is not None else keras.ops.convert_to_numpy(layer.kernel)
        unit_zero = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)
        rows[layer.name] = {"zero_weights": float(np.mean(kernel == 0)), "zero_units": float(np.mean(unit_zero))}
        zeros += int(np.sum(kernel == 0))
        total += kernel.size
        zero_units += int(np.sum(unit_zero))
        units += kernel.shape[-1]
    overall = {"zero_weights": zeros / total if total else 0.0, "zero_units": zero_units / units if units else 0.0}
    return {"layers": rows, "overall": overall}


def pruning_diagnostics(result: PruneResult, classifier: str | None = None,
                        forget_classes: Sequence[int] = ()) -> dict:
    """What a pruning step zeroed, for the results row.

    Args:
        result: the ``PruneResult`` of ``prune_units`` / ``prune_heads``.
        classifier: the classifier layer's name; its zeroed output units are class rows.
        forget_classes: the classes being forgotten (empty under random-sample forgetting).
    Returns:
        {"pruned_units": {layer: units zeroed} (heads for ``<block>_heads``),
        "classifier_rows_pruned": sorted class indices whose logit row was zeroed,
        "forget_row_pruned": whether a forgotten class's row is among them (None without
        forget classes)}.

    Example:
        >>> r = PruneResult(unit_masks={"head": np.array([1, 0, 1, 0], np.float32)})
        >>> pruning_diagnostics(r, "head", [3])["forget_row_pruned"]
        True
    """
    units = {name: int(np.sum(mask == 0)) for name, mask in result.unit_masks.items()}
    rows = []
    if classifier is not None and classifier in result.unit_masks:
        rows = [int(i) for i in np.flatnonzero(result.unit_masks[classifier] == 0)]
    forget_hit = any(int(c) in rows for c in forget_classes) if len(forget_classes) else None
    return {"pruned_units": units, "classifier_rows_pruned": rows, "forget_row_pruned": forget_hit}
