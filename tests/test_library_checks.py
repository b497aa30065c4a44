"""The library refuses what it cannot do correctly (issue 24): probability outputs, bad labels, an
empty training pass, bad options, chance-level models; and a cached compiled step never changes a
result. Tiny Sequential models on random data: each test takes seconds."""

import numpy as np
import pytest
import keras

import prunelora_keras as plk
from prunelora_keras import train


def tiny(activation=None, classes=4, name="head"):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                             keras.layers.Dense(classes, activation=activation, name=name)])


def data(n, classes=4, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), (np.arange(n) % classes + offset) % classes


def test_a_cache_hit_never_changes_a_result_the_l1_schedule_is_part_of_the_key():
    """4 steps x 2 epochs, then 8 steps x 1 epoch: the same total steps, batch signature and
    architecture; the decaying l1's schedule differs, so the second must not reuse the first's step."""
    model = tiny()
    forget = data(8, seed=9)
    opts = dict(batch_size=8, paradigm_l1=0.05, lr=1e-2)
    train._SHARED_STEPS.clear()
    plk.unlearn(model, data(32), forget, "finetune", epochs=2, verbose=False, **opts)
    shared = plk.unlearn(model, data(64, seed=1), forget, "finetune", epochs=1, verbose=False, **opts)
    train._SHARED_STEPS.clear()
    alone = plk.unlearn(model, data(64, seed=1), forget, "finetune", epochs=1, verbose=False, **opts)
    for a, b in zip(shared.model.get_weights(), alone.model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("options, message", [
    (dict(rl_labels="per-batch"), r"rl_labels = 'per-batch' is not valid: choose one of per_batch, once_other "
                                  r"\(did you mean 'per_batch'\?\)"),
    (dict(prune_classifier="yes"), "prune_classifier = 'yes' is not valid: choose one of reference, true, false"),
    (dict(lr="abc"), "lr must be a number, got 'abc'"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lora_rank=2.5), "lora_rank must be an integer"),
    (dict(batch_size=True), "batch_size must be an integer"),
    (dict(prune_heads="no"), "prune_heads must be True or False"),
    (dict(eval_models_mode="vamp"), "did you mean 'vmap'"),
    (dict(lora_rnak=4), "unknown option.*did you mean 'lora_rank'"),
])
def test_library_options_are_validated_like_the_commands(options, message):
    with pytest.raises(ValueError, match=message):
        plk.unlearn_options(**options)
    with pytest.raises(ValueError, match=message):  # and unlearn itself, before any work
        plk.unlearn(tiny(), data(16), data(4, seed=2), "finetune", epochs=1, verbose=False, **options)


def test_lossless_conversions_are_kept_and_the_command_gives_the_same_message():
    from prunelora_keras.config import build_config
    from prunelora_keras.errors import UserError

    opts = plk.unlearn_options(lr=1, prune_classifier=True, lora_rank=np.int64(4), lora_dropout=np.float32(0.5))
    assert (opts.lr, opts.prune_classifier, opts.lora_rank, opts.lora_dropout) == (1.0, "true", 4, 0.5)
    assert type(opts.lr) is float and type(opts.lora_rank) is int
    with pytest.raises(UserError, match=r"unlearn.rl_labels = 'per-batch' is not valid.*did you mean 'per_batch'"):
        build_config("vit", "quick", sets=["unlearn.rl_labels=per-batch"])
    with pytest.raises(UserError, match=r"unlearn.paradigms: 'prunedlora' is not a method \(did you mean 'pruned_lora'"):
        build_config("vit", "quick", sets=["unlearn.paradigms=prunedlora"])
