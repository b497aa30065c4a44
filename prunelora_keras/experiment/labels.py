"""What every report of a run is built from: method labels, each method's final row, number
formatting and atomic file writes (PNG figures included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def method_label(name: str) -> str:
    """The report's label of a method ("Pruned LoRA"), from the registry (the one source of names)."""
    from prunelora_keras.methods import registry  # (imports Keras: only when labels are asked for)

    return registry.label(name)


def _atomic_write(path: Path, data: bytes | str) -> None:
    """``checkpoint.atomic_write_bytes``, imported when first used (it imports JAX; the tables do not)."""
    from prunelora_keras.training.checkpoint import atomic_write_bytes as write

    write(path, data.encode() if isinstance(data, str) else data)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically (by process 0 alone in a multi-process job)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def final_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each paradigm's row at its largest epoch count, in table order."""
    final: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["paradigm"] not in final or r["epochs"] > final[r["paradigm"]]["epochs"]:
            final[r["paradigm"]] = r
    return final
