"""The one cache of compiled functions: explicit, clearable, and a hit never changes a result."""

import keras
import numpy as np

import prunelora_keras as plk
from prunelora_keras.training.caches import COMPILED
from prunelora_keras.training.inference import predict_inputs, predict_logits
from prunelora_keras.data.augment import Preprocess


def _model(seed, width=8):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3), name="images")
    h = keras.layers.Flatten(name="flat")(inputs)
    h = keras.layers.Dense(width, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h), name="tiny")


def test_a_cache_hit_never_changes_a_result_and_clear_caches_forgets_everything():
    """Two models of one architecture share one compiled evaluation function: the second's logits
    (a cache hit) equal what a fresh compilation gives after ``plk.clear_caches``, and equal numpy's."""
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    mean, std = (0.5,) * 3, (0.25,) * 3
    plk.clear_caches()
    a, b = _model(0), _model(1)
    predict_logits(a, x, Preprocess(mean, std), batch_size=4)
    assert COMPILED.count("eval") == 1
    hit = predict_logits(b, x, Preprocess(mean, std), batch_size=4)
    assert COMPILED.count("eval") == 1  # shared: the same architecture
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in b.get_weights())
    z = ((x / 255.0 - 0.5) / 0.25).reshape(10, -1)
    np.testing.assert_allclose(hit, np.maximum(z @ w1 + b1, 0) @ w2 + b2, rtol=1e-4, atol=1e-4)
    assert plk.clear_caches() >= 1 and COMPILED.count() == 0
    np.testing.assert_array_equal(predict_logits(b, x, Preprocess(mean, std), batch_size=4), hit)
    predict_logits(_model(2, width=9), x, Preprocess(mean, std), batch_size=4)  # another architecture: its own entry
    assert COMPILED.count("eval") == 2
    predict_logits(b, x, Preprocess((0.4,) * 3, std), batch_size=4)  # another normalisation: its own entry
    assert COMPILED.count("eval") == 3
    floats = x.astype("float32") / 255.0
    first = predict_inputs(a, floats)
    np.testing.assert_array_equal(predict_inputs(b, floats), (plk.clear_caches(), predict_inputs(b, floats))[1])
    assert not np.array_equal(first, predict_inputs(b, floats))
