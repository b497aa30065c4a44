"""What the search writes: ``best-<method>.toml`` (the run command reads it back), ``trials.csv``,
``trials.png`` (the objective of every trial, per method, with the best so far), ``tune.md`` (default
against tuned on the untouched split, with the tuning cost) and ``tune.json`` (all of it as data).
"""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from prunelora_keras.experiment.config import SECTIONS, TOP_LEVEL
from prunelora_keras.experiment.tune_args import EPOCHS, TuneRequest, describe
from prunelora_keras.training.progress import count

METRICS = (("UA", 2), ("MIA_confidence_svc", 2), ("RA", 2), ("TA", 2), ("avg_gap", 2), ("tow", 3))


def key_path(key: str) -> list[str]:
    """A dotted configuration key as a path in a TOML tree: ``seed``, ``data.dataset``, ``scrub.lr`` and
    ``methods.scrub.lr`` -> [seed], [data, dataset], [methods, scrub, lr] (twice)."""
    if key in TOP_LEVEL:
        return [key]
    section, _, name = key.partition(".")
    if section == "methods":
        return ["methods", *name.split(".", 1)]
    if section in SECTIONS or section == "retrain":
        return [section, name]
    return ["methods", section, name]


def _put(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def toml_value(value: Any) -> str:
    """One TOML value: booleans, integers, floats, strings and lists of them.

    Example:
        >>> toml_value([1e-05, "a", True])
        '[1e-05, "a", true]'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no place for {value!r} here")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_text(tree: dict, prefix: str = "") -> str:
    """A nested dict as TOML: each table's values, then its sub-tables under dotted headers."""
    lines = [f"{k} = {toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    for k, v in tree.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            body = toml_text(v, name)
            lines += ["", f"[{name}]", *([body] if body else [])] if any(not isinstance(x, dict) for x in v.values()) \
                else ["", body]
    return "\n".join(line for line in lines).strip("\n")


def best_toml(req: TuneRequest, method: str, params: dict[str, Any]) -> str:
    """``best-<method>.toml``: the tune's own configuration (its --config file, flags and --set) and the
    chosen hyperparameters, all under ``[models.<model>]`` so that they apply last, as they did."""
    layer: dict[str, Any] = {}
    for key, value in req.tree_overrides:
        _put(layer, key_path(key), value)
    _put(layer, ["unlearn", "paradigms"], ["retrain", method])
    _put(layer, ["unlearn", "epochs"], [int(params.get(EPOCHS, req.max_epochs))])
    for key, value in params.items():
        if key != EPOCHS:
            _put(layer, ["methods", method, key], value)
    tree = tomllib.loads(Path(req.config_file).read_text()) if req.config_file else {}
    tree = _merge(tree, {"models": {req.model: layer}})
    head = (f"# {method}: hyperparameters chosen by a search on a validation split ({req.trials} trials, objective "
            f"{req.objective}):\n#   {req.command}\n# Reproduce the tuned run on the untouched split:\n"
            f"#   python -m prunelora_keras.run --model {req.model} --preset {req.preset} --config best-{method}.toml\n")
    return head + "\n" + toml_text(tree) + "\n"


def trials_csv(methods: dict[str, Any]) -> str:
    """Every finished trial: method, trial, objective value, seconds, each searched key, the metrics."""
    keys = sorted({k for m in methods.values() for t in m["trials"] for k in t["params"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "trial", "value", "seconds", *keys, *(k for k, _ in METRICS), "status"])
    for name, m in methods.items():
        for t in m["trials"]:
            writer.writerow([name, t["trial"], t["value"], round(t["seconds"], 2), *(t["params"].get(k, "") for k in keys),
                             *(t.get(k) for k, _ in METRICS), t.get("status")])
    return out.getvalue()


def _cell(row: dict[str, Any], key: str, digits: int) -> str:
    value = row.get(key)
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def table(req: TuneRequest, methods: dict[str, Any], shared_s: float) -> str:
    """Default against tuned, each on the untouched split, with the search's cost."""
    head = ("| method | hyperparameters | epochs | UA | MIA | RA | TA | Avg. Gap | ToW | validation " + req.objective
            + " | tuning s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, m in methods.items():
        for kind in ("default", "tuned"):
            row = m[kind]
            params = m["best"]["params"] if kind == "tuned" else m["trials"][0]["params"]
            shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()
                              if k != EPOCHS) or "-"
            value = m["best"]["value"] if kind == "tuned" else m["trials"][0]["value"]
            lines.append(f"| {name} ({kind}) | {shown} | {row.get('epochs')} | "
                         + " | ".join(_cell(row, k, d) for k, d in METRICS)
                         + f" | {value:.3f} | {m['tuning_s']:.0f} |")
    return ("\n".join(lines) + f"\n\nDefault: trial 0 (the configuration's hyperparameters at {count(req.max_epochs, 'epoch')}); "
            f"tuned: the best of {req.trials} trials on the validation split. Both scored once on the untouched split. "
            f"The validation original took {shared_s:.0f} s (shared by every method).\n")


def plot(methods: dict[str, Any], objective: str, path: Path) -> None:
    """The objective of every trial per method, with the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunelora_keras.experiment.labels import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    better = min if objective == "avg_gap" else max
    for name, m in methods.items():
        values = [t["value"] for t in m["trials"]]
        line, = ax.plot(range(len(values)), values, "o", ms=3, alpha=0.5)
        best = [better(values[:i + 1]) for i in range(len(values))]
        ax.plot(range(len(values)), best, "-", color=line.get_color(), label=name)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {objective} ({'lower' if objective == 'avg_gap' else 'higher'} is better)")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def recorded_settings(req: TuneRequest) -> dict[str, Any]:
    """``describe(req)`` with the search spaces of every method searched in the folder before kept: their
    studies live on in ``study.journal``, so a later request must not search one of them in another space
    (``tune.check_folder`` reads these), even after a request for other methods rewrote tune.json.

    Args:
        req: the search request.
    Returns:
        tune.json's ``settings``: the request as JSON data, its ``spaces`` merged over the folder's earlier ones.

    Example:
        >>> recorded_settings(request(["--model", "vit", "--method", "ga", "--out", "t"]))["spaces"]  # doctest: +SKIP
        {'ga': {...}}
    """
    settings = json.loads(json.dumps(describe(req)))
    try:
        before = json.loads((Path(req.out) / "tune.json").read_text()).get("settings", {}).get("spaces", {})
    except (OSError, ValueError):
        before = {}
    settings["spaces"] = {**before, **settings["spaces"]}
    return settings


def write_outputs(req: TuneRequest, methods: dict[str, Any], shared_s: float) -> dict[str, Any]:
    """tune.json, trials.csv, trials.png and tune.md in the search folder; returns tune.json's data."""
    from prunelora_keras.experiment.labels import _atomic_write

    out = Path(req.out)
    result = {"settings": recorded_settings(req), "command": req.command, "out": str(out),
              "validation_original_s": shared_s, "methods": methods}
    _atomic_write(out / "tune.json", json.dumps(result, indent=1, default=float))
    _atomic_write(out / "trials.csv", trials_csv(methods))
    _atomic_write(out / "tune.md", f"# Search: {req.command}\n\n" + table(req, methods, shared_s))
    plot(methods, req.objective, out / "trials.png")
    return result


def summary(result: dict[str, Any]) -> str:
    """What the command prints: default against tuned, and where the best hyperparameters are."""
    files = ", ".join(Path(m["toml"]).name for m in result["methods"].values())
    return (Path(result["out"]) / "tune.md").read_text() + f"\nbest hyperparameters: {files} in {result['out']}"
