"""Reading one configuration value: a TOML or ``--set`` value checked against a dataclass field's
type (``coerce``), and ``section.key=value`` (``parse_set``)."""

from __future__ import annotations

import tomllib
import typing
from typing import Any

from prunelora_keras.errors import UserError
from prunelora_keras.methods.hparams import typed

def coerce(value: Any, tp: Any, where: str) -> Any:
    """A TOML or ``--set`` value checked against a configuration field's type by the package's one
    type check (``hparams.typed``: lossless conversions only, finite floats, integers within
    int64), a comma-separated string read as a list first (``--set unlearn.epochs=5,10``)."""
    if isinstance(tp, str):
        tp = eval(tp, {"list": list, "str": str, "int": int, "float": float, "bool": bool})  # noqa: S307
    if typing.get_origin(tp) in (list, tuple) and isinstance(value, str):
        (item_tp,) = typing.get_args(tp)[:1]
        value = [v.strip() for v in value.split(",") if v.strip()]
        if item_tp is not str:
            value = [parse_set(f"item={v}")[1] for v in value]
    try:
        return typed(where, value, tp)
    except ValueError as exc:
        raise UserError(str(exc)) from None


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
