"""The library refuses what it cannot do correctly (issue 24): probability outputs, bad labels, an
empty training pass, bad options, chance-level models; and a cached compiled step never changes a
result. Tiny Sequential models on random data: each test takes seconds."""

import numpy as np
import pytest
import keras

import prunelora_keras as plk
from prunelora_keras.data.augment import Preprocess


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
    opts = dict(batch_size=8, l1=0.05, lr=1e-2)
    plk.clear_caches()
    plk.unlearn(model, data(32), forget, "finetune", epochs=2, verbose=False, **opts)
    shared = plk.unlearn(model, data(64, seed=1), forget, "finetune", epochs=1, verbose=False, **opts)
    plk.clear_caches()
    alone = plk.unlearn(model, data(64, seed=1), forget, "finetune", epochs=1, verbose=False, **opts)
    for a, b in zip(shared.model.get_weights(), alone.model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method, options, message", [
    ("rl", dict(labels="per-batch"), r"labels = 'per-batch' is not valid: choose one of per_batch, once_other "
                                     r"\(did you mean 'per_batch'\?\)"),
    ("finetune", dict(prune_classifier="yes"), "prune_classifier = 'yes' is not valid: choose one of reference, true, false"),
    ("finetune", dict(lr="abc"), "lr must be a number, got 'abc'"),
    ("finetune", dict(lr=float("nan")), "lr must be a finite number"),
    ("lora", dict(rank=2.5), "rank must be an integer"),
    ("finetune", dict(batch_size=True), "batch_size must be an integer"),
    ("finetune", dict(prune_heads="no"), "prune_heads must be True or False"),
    ("finetune", dict(eval_models_mode="vmap"), "unknown option 'eval_models_mode'"),  # an evaluation option
    ("lora", dict(rnak=4), "unknown option 'rnak' for method 'lora' \\(did you mean 'rank'\\?\\)"),
    ("lora", dict(amount=0.5), "unknown option 'amount' for method 'lora'.*its hyperparameters: alpha, dropout"),
    ("scrub", dict(scrub_lr=0.1), "unknown option 'scrub_lr' for method 'scrub': pass lr=..."),
    ("ga", dict(scrub_lr=0.1), "unknown option 'scrub_lr' for method 'ga': it is now scrub.lr, not a hyperparameter of ga"),
    ("scrub", dict(lr_decay_epochs=[0, 5]), r"lr_decay_epochs = \(0, 5\) is out of range: must be >= 1"),
    ("scrub", dict(lr_decay_epochs=3), "lr_decay_epochs must be a list of int values"),
    ("neggrad_plus", dict(alpha=1.5), r"alpha = 1.5 is out of range: must be in \[0, 1\]"),
])
def test_library_options_are_validated_like_the_commands(method, options, message):
    with pytest.raises(ValueError, match=message):
        plk.unlearn_options(method, **options)
    with pytest.raises(ValueError, match=message):  # and unlearn itself, before any work
        plk.unlearn(tiny(), data(16), data(4, seed=2), method, epochs=1, verbose=False, **options)


def test_lossless_conversions_are_kept_and_the_command_gives_the_same_message():
    from prunelora_keras.experiment.config import build_config
    from prunelora_keras.errors import UserError

    opts, h = plk.unlearn_options("lora", lr=1, prune_classifier=True, rank=np.int64(4), dropout=np.float32(0.5))
    assert (h.lr, opts.prune_classifier, h.rank, h.dropout) == (1.0, "true", 4, 0.5)
    assert type(h.lr) is float and type(h.rank) is int
    assert plk.unlearn_options("scrub", lr_decay_epochs=[])[1].lr_decay_epochs == ()  # no decay
    with pytest.raises(UserError, match=r"rl.labels = 'per-batch' is not valid.*did you mean 'per_batch'"):
        build_config("vit", "quick", sets=["rl.labels=per-batch"])
    with pytest.raises(ValueError, match=r"labels = 'per-batch' is not valid.*did you mean 'per_batch'"):
        plk.unlearn_options("salun", labels="per-batch")
    with pytest.raises(UserError, match=r"unlearn.paradigms: 'prunedlora' is not a method \(did you mean 'pruned_lora'"):
        build_config("vit", "quick", sets=["unlearn.paradigms=prunedlora"])


def _refused(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("build", [
    lambda: tiny("softmax"),  # the usual Keras classifier
    lambda: tiny("sigmoid"),
    lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="head"), keras.layers.Softmax()]),
    lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="head"), keras.layers.Activation("relu")]),
    lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="head"),  # probabilities a layer hides
                              keras.layers.Lambda(lambda t: keras.ops.softmax(t))]),
])
def test_a_model_that_outputs_probabilities_is_refused_everywhere(build):
    model, retain, forget, test = build(), data(16), data(4, seed=2), data(8, seed=3)
    message = "not logits.*classifier_activation=None"
    _refused(lambda: plk.unlearn(model, retain, forget, "finetune", epochs=1, verbose=False), message)
    _refused(lambda: plk.evaluate(model, retain, forget, test), message)
    _refused(lambda: plk.evaluate(tiny(), retain, forget, test, reference=model), "reference.*not logits")
    _refused(lambda: plk.unlearn_pool(model, retain, forget, "finetune", k=2, epochs=1, verbose=False), message)


def test_a_linear_head_is_accepted_and_classifier_layer_refuses_a_softmax_kernel():
    from prunelora_keras.api.checks import output_activation
    from prunelora_keras.evaluation.features import classifier_layer

    linear = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="head"), keras.layers.Activation("linear"),
                               keras.layers.Flatten()])
    assert output_activation(linear) is None and classifier_layer(linear).name == "head"
    with pytest.raises(ValueError, match="applies softmax"):
        classifier_layer(tiny("softmax"))


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2, 4]), r"1 label\(s\) outside 0..3"),  # label 4 of 4 classes: an all-zero one-hot row
    (np.array([0, 1, -1, 2]), r"outside 0..3"),
    (np.array([0.0, 1.5, 2.0, 3.0]), "whole class numbers"),
    (np.eye(5)[[0, 1, 2, 3]], "not one-hot rows of the model's 4 classes"),
    (np.array([[0.5, 0.5, 0, 0]] * 4), "not one-hot rows"),
    (np.array(["a", "b", "c", "d"]), "must be integers"),
])
def test_bad_labels_are_refused_in_unlearn_evaluate_and_the_pools(labels, message):
    model, x = tiny(), data(4, seed=5)[0]
    good, test = data(16), data(8, seed=3)
    _refused(lambda: plk.unlearn(model, good, (x, labels), "finetune", epochs=1, verbose=False), message)
    _refused(lambda: plk.unlearn(model, (x, labels), good, "finetune", epochs=1, verbose=False), message)
    _refused(lambda: plk.evaluate(model, good, good, (x, labels)), message)
    _refused(lambda: plk.unlearn_pool(model, good, (x, labels), "finetune", k=2, epochs=1, verbose=False), message)
    from prunelora_keras.training.recipe import TrainConfig

    _refused(lambda: plk.scratch_pool(lambda s: tiny(), TrainConfig(), x.astype("uint8"), labels, 2, 4, Preprocess(),
                                      seeds=[0, 1], verbose=False), message)


def test_an_empty_set_or_an_empty_training_pass_is_refused():
    model, good = tiny(), data(16)
    empty = (np.zeros((0, 6), "float32"), np.zeros(0, int))
    _refused(lambda: plk.unlearn(model, good, empty, "finetune", epochs=1, verbose=False), "forget is empty")
    _refused(lambda: plk.evaluate(model, empty, good, good), "retain is empty")
    for epochs in (0, -1, 1.5, True):
        _refused(lambda: plk.unlearn(model, good, data(4, seed=2), "finetune", epochs=epochs, verbose=False),
                 "epochs must be an integer >= 1")
        _refused(lambda: plk.unlearn_pool(model, good, data(4, seed=2), "finetune", k=2, epochs=epochs, verbose=False),
                 "epochs must be an integer >= 1")
    from prunelora_keras.training.recipe import TrainConfig

    _refused(lambda: plk.scratch_pool(lambda s: tiny(), TrainConfig(epochs=0), good[0].astype("uint8"), good[1], 4, 4,
                                      Preprocess(), seeds=[0, 1], verbose=False), "epochs must be an integer >= 1")


def test_a_chance_level_model_is_warned_about_in_the_result_too():
    from prunelora_keras.api.checks import ChanceLevelWarning, chance_pct

    x, y = data(90, classes=9)
    constant = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9, name="head")])
    constant.get_layer("head").set_weights([np.zeros((6, 9), "float32"), 5 * np.eye(9, dtype="float32")[0] - 1])  # always 0
    assert chance_pct(y) == pytest.approx(100 / 9)
    trained = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9, name="head")])
    # a classifier that is right on every retained sample: a least-squares fit of one-hot targets
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], 10 * np.eye(9)[y] - 5, rcond=None)
    trained.get_layer("head").set_weights([w[:6].astype("float32"), w[6].astype("float32")])
    forget, test = data(9, classes=9, seed=4), data(18, classes=9, seed=5)
    with pytest.warns(ChanceLevelWarning, match="the reference model is at chance"):
        scores = plk.evaluate(trained, (x, y), forget, test, reference=constant, relearn_max_steps=0)
    assert len(scores["warnings"]) == 1 and "11.1%" in scores["warnings"][0]
    assert scores["RA"] > 100 / 9 + 5  # the unlearned model itself is fine: not warned about
    with pytest.warns(ChanceLevelWarning, match="the unlearned model is at chance"):
        assert len(plk.evaluate(constant, (x, y), forget, test)["warnings"]) == 1


def test_the_command_warns_about_models_at_chance_in_its_results():
    from prunelora_keras.api.checks import chance_warnings
    from prunelora_keras.experiment.pipeline import retain_accuracies

    rows = [{"paradigm": "retrain", "epochs": 5, "RA": 98.0}, {"paradigm": "pruned", "epochs": 5, "RA": 40.0},
            {"paradigm": "pruned", "epochs": 10, "RA": 12.0}, {"paradigm": "ga", "epochs": 10, "status": "non-finite"}]
    acc = retain_accuracies({"RA": 99.0}, rows)
    assert acc == {"original": 99.0, "retrain": 98.0, "pruned": 12.0}  # each method's last column
    lines = chance_warnings(acc, np.arange(900) % 9, warn=False)
    assert len(lines) == 1 and lines[0].startswith("the pruned model is at chance on the retained data (12.0%")


@pytest.mark.parametrize("options, message", [
    (dict(relearn_fraction=1.5), r"relearn_fraction must be in \(0, 1\)"),
    (dict(relearn_forget_share=1.0), r"relearn_forget_share must be in \[0, 1\)"),
    (dict(relearn_lr=0), "relearn_lr must be > 0"),
    (dict(relearn_max_steps=-1), "relearn_max_steps must be in 0..1000000"),
])
def test_evaluate_refuses_bad_relearn_options_before_any_work(options, message):
    # no original model given: relearning would not even run, the option is still refused
    _refused(lambda: plk.evaluate(tiny(), data(16), data(4, seed=2), data(8, seed=3), **options), message)


@pytest.mark.filterwarnings("ignore::prunelora_keras.api.checks.ChanceLevelWarning")  # an untrained model
def test_evaluate_sets_the_forgotten_classs_test_samples_aside_and_says_so():
    """The whole test set, as the README's snippet passes it: the forgotten class's test samples leave TA and
    the attacks and become held-out D_f, exactly as if the user had split them (issue 39: TA was 84.2 with
    them, 93.8 without, on one model)."""
    model = tiny()
    x, y = data(64)
    retain, forget = (x[y != 2], y[y != 2]), (x[y == 2], y[y == 2])
    xt, yt = data(40, seed=7)
    whole = plk.evaluate(model, retain, forget, (xt, yt), relearn_max_steps=0)
    split = plk.evaluate(model, retain, forget, (xt[yt != 2], yt[yt != 2]), test_forget=(xt[yt == 2], yt[yt == 2]),
                         relearn_max_steps=0)
    assert whole["notes"] == ["test: 10 samples of the forgotten class(es) 2 left out of TA and the attacks "
                              "(held-out D_f)"] and split["notes"] == []
    assert whole["test_size"] == split["test_size"] == 30
    for key in ("TA", "UA", "RA", "MIA_confidence_svc", "probe_forget_acc_test"):
        assert whole[key] == split[key], key
    kept = yt != 2
    predicted = np.argmax(model.predict(xt[kept], verbose=0), -1)
    assert whole["TA"] == pytest.approx(100 * np.mean(predicted == yt[kept]))  # numpy on the remaining classes
    # random forgetting (every class still in D_r): nothing is set aside
    assert plk.evaluate(model, (x, y), (x[:4], y[:4]), (xt, yt), relearn_max_steps=0)["test_size"] == 40
    _refused(lambda: plk.evaluate(model, retain, forget, (xt[yt == 2], yt[yt == 2])),
             "test holds only samples of the forgotten classes")


def test_unlearn_warns_before_training_when_the_model_is_at_chance_on_the_retained_data():
    """Issue 39: the README's MobileNetV3Small at Keras's default BatchNorm momentum sat at 10% and unlearned
    for 85 s before ``evaluate`` said so."""
    import warnings

    from prunelora_keras.api.checks import ChanceLevelWarning

    x, y = data(90, classes=9)
    constant = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9, name="head")])
    constant.get_layer("head").set_weights([np.zeros((6, 9), "float32"), 5 * np.eye(9, dtype="float32")[0] - 1])
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = plk.unlearn(constant, (x, y), data(9, classes=9, seed=4), "finetune", epochs=1, verbose=False,
                             on_epoch_end=lambda stats: seen.append(len(caught)))
    chance = [w for w in caught if issubclass(w.category, ChanceLevelWarning)]
    assert len(chance) == 1 and "the original model is at chance on the retained data (11.1%" in str(chance[0].message)
    assert seen and seen[0] >= 1  # issued before the first epoch ended
    assert result.warnings == [str(chance[0].message)]
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], 10 * np.eye(9)[y] - 5, rcond=None)
    trained = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9, name="head")])
    trained.get_layer("head").set_weights([w[:6].astype("float32"), w[6].astype("float32")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChanceLevelWarning)  # a trained model: no warning
        assert plk.unlearn(trained, (x, y), data(9, classes=9, seed=4), "finetune", epochs=1, verbose=False).warnings == []
