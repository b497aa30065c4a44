"""``evaluate``'s forward passes on keras.applications depthwise networks: the model as Keras builds it
against ``with_fast_layers`` (what ``evaluate`` now scores through), seconds for 2,048 images at batch 256.

    KERAS_BACKEND=jax python benchmarks/evaluate_forward.py   # writes benchmarks/results/evaluate-forward.md
"""
import datetime
import platform
import time
from pathlib import Path

import numpy as np

import prunelora_keras  # noqa: F401  (selects the JAX backend)
import keras
from prunelora_keras.data.augment import Preprocess
from prunelora_keras.evaluation.features import predict_logits_and_features
from prunelora_keras.models.lora import with_fast_layers

MODELS = {"MobileNetV3Small": keras.applications.MobileNetV3Small, "EfficientNetB0": keras.applications.EfficientNetB0}


def main() -> None:
    x = np.random.default_rng(0).integers(0, 255, size=(2048, 32, 32, 3)).astype(np.float32)
    rows = []
    for name, build in MODELS.items():
        model = build(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
        start = time.perf_counter()
        fast = with_fast_layers(model)
        convert = time.perf_counter() - start
        seconds = {}
        for label, m in (("keras", model), ("fast", fast)):
            predict_logits_and_features(m, x[:256], Preprocess(), 256)  # compiled once
            start = time.perf_counter()
            predict_logits_and_features(m, x, Preprocess(), 256)
            seconds[label] = time.perf_counter() - start
        rows.append(f"| {name} | {seconds['keras']:.2f} | {seconds['fast']:.2f} | {seconds['keras'] / seconds['fast']:.1f}x "
                    f"| {convert:.1f} |")
        print(rows[-1], flush=True)
    cpu = f"{platform.processor() or platform.machine()}"
    text = "\n".join([f"evaluate's forward passes, 2,048 32x32 images at batch 256, seconds ({cpu}, "
                      f"{datetime.date.today()})", "",
                      "| model | Keras's layers | with_fast_layers | speed-up | conversion s |", "|---|---|---|---|---|",
                      *rows, ""])
    out = Path(__file__).parent / "results" / "evaluate-forward.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
