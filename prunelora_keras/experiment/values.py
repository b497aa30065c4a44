"""Reading one configuration value: a TOML or ``--set`` value checked against a dataclass field's
type, converted only where it is lossless (``coerce``), and ``section.key=value`` (``parse_set``)."""

from __future__ import annotations

import math
import tomllib
import types
import typing
from typing import Any

from prunelora_keras.errors import UserError

# Integers beyond int64 overflow as soon as numpy or JAX sees them.
INT_LIMIT = 2**63
SHORT_REPR = 60


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _short(value: Any) -> str:
    """``repr`` cut to one short line, so a huge or nested bad value still gives a readable error."""
    text = repr(value)
    return text if len(text) <= SHORT_REPR else text[:SHORT_REPR - 3] + "..."


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field type, converting only where it is lossless.

    Numbers must also be usable: floats finite (TOML allows ``nan`` and ``inf``, which would
    only surface as a NaN loss or an overflow hours later), integers within int64.
    """
    if isinstance(tp, str):
        tp = eval(tp, {"list": list, "str": str, "int": int, "float": float, "bool": bool})  # noqa: S307
    origin = typing.get_origin(tp)
    if origin in (list, types.GenericAlias) or origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            if item_tp is not str:
                value = [parse_set(f"item={v}")[1] for v in value]
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {_short(value)}")
        return [coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= INT_LIMIT:
                raise UserError(f"{where}: {_short(value)} is too large (integers must fit in 64 bits)")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) >= INT_LIMIT:
                raise UserError(f"{where}: {_short(value)} is too large")
            if not math.isfinite(value):
                raise UserError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where}: expected {_type_name(tp)}, got {_short(value)}")


def parse_set(assignment: str) -> tuple[str, Any]:
    """``section.key=value`` -> (dotted key, value). The value is read as TOML, else as a string."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set pretrain.epochs=3")
    key, raw = assignment.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value
