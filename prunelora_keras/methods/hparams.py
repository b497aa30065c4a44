"""Each method's hyperparameters: one frozen dataclass per method, typed, documented, checked once.

A method's knobs belong to the method (``Method.hparams`` names its dataclass), not to a shared bag
of options: SCRUB's learning rate is ``scrub.lr``, GA's is ``ga.lr``. Every field is declared with
``hparam(default, doc, ...)``, which records its one-line documentation, its allowed values and its
range; ``check_hparams`` reads them to validate a value set, for the command (``--set scrub.lr=...``
and ``[methods.scrub]`` tables) and for ``prunelora_keras.unlearn(..., method="scrub", lr=...)``
alike; ``--list-keys`` and the tables of docs/methods.md are generated from the same declarations
(``hparams_markdown``). A user's registered method brings its own dataclass and gets all of this.

The built-in methods' dataclasses live in ``builtin_hparams.py``; both modules import neither Keras
nor JAX, so that the command checks every key before anything heavy is imported.

Example:
    >>> from prunelora_keras.methods.builtin_hparams import ScrubHParams
    >>> h = check_hparams(ScrubHParams, {"lr": 1e-3}, "scrub.")
    >>> (h.lr, h.temperature)
    (0.001, 4.0)
    >>> check_hparams(ScrubHParams, {"lr": -1.0}, "scrub.")
    Traceback (most recent call last):
    ...
    ValueError: scrub.lr = -1.0 is out of range: must be > 0
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

INT_LIMIT = 2**63  # integers beyond int64 overflow as soon as numpy or JAX sees them

Check = tuple[Callable[[Any], bool], str]
POSITIVE: Check = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, "must be >= 0")
AT_LEAST_ONE: Check = (lambda v: v >= 1, "must be >= 1")
UNIT_OPEN: Check = (lambda v: 0 <= v < 1, "must be in [0, 1)")
UNIT_CLOSED: Check = (lambda v: 0 <= v <= 1, "must be in [0, 1]")


@dataclass(frozen=True)
class Search:
    """Where ``python -m prunelora_keras.tune`` looks for a hyperparameter: ``kind`` "log" (a float
    drawn uniformly on a log scale in [low, high]), "float" (uniformly), "int" (an integer in
    [low, high]) or "choice" (one of ``choices``). Declared beside the field (``hparam(search=...)``),
    so that the search space is part of the method.

    Example:
        >>> Search("log", 1e-5, 1e-1).contains(1e-3)
        True
    """

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def describe(self) -> str:
        """The space in words, for the docs and ``--list-keys``: "log [1e-05, 0.1]", "one of 4, 8"."""
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.kind} [{self.low:g}, {self.high:g}]"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the space."""
        if self.kind == "choice":
            return value in self.choices
        return self.low <= value <= self.high


LR_SEARCH = Search("log", 1e-5, 1e-1)  # Deep Unlearn's learning-rate range for every method


def hparam(default: Any, doc: str, *, choices: tuple[str, ...] = (), check: Check | None = None,
           search: Search | None = None) -> Any:
    """A hyperparameter field: its default, a one-line ``doc``, the allowed ``choices`` of a string,
    a ``check`` (predicate, "must be ...") on its value and where the search looks (``search``;
    None: the search leaves the field at its default).

    Example:
        >>> @dataclass(frozen=True)
        ... class Mine(HParams):
        ...     steps: int = hparam(3, "how many steps", check=AT_LEAST_ONE)
        >>> Mine().steps
        3
    """
    return dataclasses.field(default=default, metadata={"doc": doc, "choices": choices, "check": check,
                                                        "search": search})


@dataclass(frozen=True)
class HParams:
    """The base of every method's hyperparameters (a method without any uses it as it is)."""


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid name, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def typed(name: str, value: Any, tp: Any, where: str = "", choices: tuple[str, ...] = ()) -> Any:
    """``value`` checked against the field type ``tp`` (an int given for a float is converted, NumPy
    scalars are read as Python ones, a list for a tuple); ValueError naming the option, what it got
    and what it needs."""
    got = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}{name} must be a list of {item.__name__} values, got {got}")
        out = [typed(f"{name}[{i}]", v, item, where) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()  # numpy scalars (np.float32(1e-3), np.int64(4), np.bool_)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= INT_LIMIT:
            raise ValueError(f"{where}{name} = {got} is too large (integers must fit in 64 bits)")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) and abs(value) >= INT_LIMIT:
            raise ValueError(f"{where}{name} = {got} is too large")
        if not math.isfinite(value):
            raise ValueError(f"{where}{name} must be a finite number, got {got}")
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, bool) and "true" in choices:
        return "true" if value else "false"  # a choice "true"/"false" given as a bool (TOML, Python)
    kind = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}.get(tp, str(tp))
    raise ValueError(f"{where}{name} must be {kind}, got {got}")


def check_value(f: dataclasses.Field, value: Any, tp: Any, where: str = "") -> Any:
    """One field's value: its type (``typed``), its choices and its range, from ``f``'s metadata."""
    choices = f.metadata.get("choices", ())
    value = typed(f.name, value, tp, where, choices)
    if choices and value not in choices:
        raise ValueError(f"{where}{f.name} = {value!r} is not valid: choose one of {', '.join(choices)}"
                         f"{did_you_mean(value, choices)}")
    check = f.metadata.get("check")
    items = value if isinstance(value, (list, tuple)) else [value]
    if check is not None and not all(check[0](v) for v in items):
        raise ValueError(f"{where}{f.name} = {value!r} is out of range: {check[1]}")
    return value


def check_hparams(cls: type[HParams], values: Mapping[str, Any] | HParams | None = None, where: str = "") -> HParams:
    """The one validation of a method's hyperparameters: ``cls``'s defaults with ``values`` replaced,
    every field's type, choices and range checked.

    Args:
        cls: the method's dataclass (``Method.hparams``).
        values: {field: value} to replace (unknown names are refused), or an instance to check.
        where: the prefix of each name in messages (the command passes ``"scrub."``).
    Returns:
        the validated, frozen instance (lossless conversions applied: an int for a float).
    Raises:
        ValueError: one line naming the field, the bad value and the fix.

    Example:
        >>> from prunelora_keras.methods.builtin_hparams import GAHParams
        >>> check_hparams(GAHParams, {"lr": 1}).lr
        1.0
    """
    if isinstance(values, HParams):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ValueError(f"unknown hyperparameter {where}{unknown[0]}{did_you_mean(unknown[0], fields)}; "
                         f"{where.rstrip('.') or cls.__name__} has: {known}")
    hints = typing.get_type_hints(cls)
    out = {}
    for name, f in fields.items():
        value = values[name] if name in values else getattr(cls(), name)
        out[name] = check_value(f, value, hints[name], where)
    return cls(**out)


def describe(cls: type[HParams]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc with its choices and range) per field, for ``--list-keys`` and the docs."""
    hints, default, rows = typing.get_type_hints(cls), cls(), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        kind = getattr(tp, "__name__", str(tp)) if typing.get_origin(tp) is None else \
            f"list[{typing.get_args(tp)[0].__name__}]"
        doc = f.metadata.get("doc", "")
        if f.metadata.get("choices"):
            doc += f" (one of: {', '.join(f.metadata['choices'])})"
        if f.metadata.get("check"):
            doc += f"; {f.metadata['check'][1]}"
        if f.metadata.get("search") is not None:
            doc += f"; tuned over {f.metadata['search'].describe()}"
        value = getattr(default, f.name)
        rows.append((f.name, kind, list(value) if isinstance(value, tuple) else value, doc))
    return rows


def search_space(cls: type[HParams]) -> dict[str, Search]:
    """{field: Search} of the fields of ``cls`` that declare one (``hparam(search=...)``).

    Example:
        >>> from prunelora_keras.methods.builtin_hparams import SalUnHParams
        >>> sorted(search_space(SalUnHParams))
        ['lr', 'ratio']
    """
    return {f.name: f.metadata["search"] for f in dataclasses.fields(cls) if f.metadata.get("search") is not None}


def hparams_markdown(methods: Iterable[tuple[str, type[HParams]]]) -> str:
    """One markdown table per method (``### name``, then key, type, default, meaning), as
    docs/methods.md holds them between its generated-table markers."""
    parts = []
    for name, cls in methods:
        rows = describe(cls)
        if not rows:
            continue
        parts.append(f"#### `{name}`\n\n| key | type | default | meaning |\n|---|---|---|---|")
        parts += [f"| `{name}.{key}` | {kind} | `{default!r}` | {doc} |" for key, kind, default, doc in rows]
        parts.append("")
    return "\n".join(parts).strip() + "\n"
