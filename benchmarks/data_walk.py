"""A walk of the data: which package modules the data set and its normalisation travel through.

Issue 25 asks that the experiment hand arrays and one small ``Preprocess`` value to each stage,
not a data set plus its mean and std, and measures it as a walk from the experiment's entry point
(``pipeline.run_pipeline``): how many modules the data enters and how often it returns to a module
it had already left. This script measures that walk on a short quick-preset run (ViT, digits,
Retrain and two methods, one epoch each) with ``sys.setprofile``:

- a *data call* is a call of a package function whose arguments hold the ``Dataset`` itself
  (``ds``: the data set together with its statistics) or, separately, the statistics
  (parameters named ``mean`` and ``std``; or, after issue 25, a ``Preprocess``); a dataclass's
  generated ``__init__`` counts as its class's module; the carried value's own methods and
  properties (``self``) do not count;
- the walk is the chronological sequence of the data calls' modules, repeats in a row collapsed;
- *entered*: the distinct modules of the walk, the entry module (experiment/pipeline.py) aside;
- *returns*: the distinct transitions A -> B of the walk where B had been visited and left before
  (a per-paradigm loop that repeats the same path counts each back edge once).

Two walks are reported: the data set's (calls holding ``ds``) and the statistics' (calls holding
``mean``/``std`` or a ``Preprocess``), each with its module list, to
``benchmarks/results/data-walk-<label>.txt``.

    python benchmarks/data_walk.py after
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = str(ROOT / "prunelora_keras") + os.sep


def walk_summary(sequence: list[str], entry: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The distinct modules entered (entry aside) and the distinct back edges of a module walk."""
    collapsed = [m for i, m in enumerate(sequence) if i == 0 or m != sequence[i - 1]]
    seen: set[str] = set()
    back: set[tuple[str, str]] = set()
    for i, module in enumerate(collapsed):
        if module in seen and i > 0:
            back.add((collapsed[i - 1], module))
        seen.add(module)
    return sorted(seen - {entry}), sorted(back)


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "now"
    from prunelora_keras.data.datasets import Dataset
    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.experiment.pipeline import run_pipeline

    def is_preprocess(value) -> bool:
        return type(value).__name__ == "Preprocess"

    walks: dict[str, list[str]] = {"data set": [], "statistics": []}

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename.startswith(PACKAGE):
            module = code.co_filename[len(PACKAGE):]
        elif code.co_name == "__init__" and type(frame.f_locals.get("self")).__module__.startswith("prunelora_keras."):
            # a dataclass's generated __init__ (its code's file is "<string>"): the class's module
            module = type(frame.f_locals["self"]).__module__.split(".", 1)[1].replace(".", "/") + ".py"
        else:
            return
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        # the carried value's own methods and properties (``ds.num_classes``, ``Preprocess.__call__``)
        # are not travel: only what it is handed to
        args = {n: frame.f_locals.get(n) for n in names if n != "self"}
        if any(isinstance(v, Dataset) for v in args.values()):
            walks["data set"].append(module)
        if ("mean" in args and "std" in args) or any(is_preprocess(v) for v in args.values()):
            walks["statistics"].append(module)

    cfg = build_config("vit", "quick", sets=["pretrain.epochs=1", "retrain.epochs=1", "unlearn.epochs=[1]",
                                             "unlearn.paradigms=[\"retrain\",\"finetune\",\"lora\"]"])
    with tempfile.TemporaryDirectory() as out:
        sys.setprofile(profile)
        try:
            run_pipeline(cfg, Path(out))
        finally:
            sys.setprofile(None)
    lines = [f"# data walk ({label}): quick ViT, retrain+finetune+lora, 1 epoch each; see benchmarks/data_walk.py"]
    for name, sequence in walks.items():
        modules, returns = walk_summary(sequence, "experiment/pipeline.py")
        lines.append(f"{name}: {len(modules)} modules entered, {len(returns)} returns to a module already left")
        lines.append("  entered: " + ", ".join(modules))
        lines.append("  returns: " + ", ".join(f"{a} -> {b}" for a, b in returns))
    text = "\n".join(lines) + "\n"
    print(text)
    path = ROOT / "benchmarks" / "results" / f"data-walk-{label}.txt"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
