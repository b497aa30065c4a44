import pytest

from prunelora_keras.experiment.config import available_presets, build_config, coerce, parse_set
from prunelora_keras.errors import UserError


def test_presets_ship():
    assert {"paper", "cpu", "quick"} <= set(available_presets())


def test_paper_preset_matches_reference_recipes():
    r = build_config("resnet50", "paper")
    assert (r.pretrain.optimizer, r.pretrain.lr, r.pretrain.momentum, r.pretrain.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (r.pretrain.epochs, r.pretrain.schedule, r.pretrain.augment) == (200, "cosine", ["crop", "flip"])
    assert r.model.width == 1.0 and r.data.batch_size == 128 and r.data.forget_class == 3
    v = build_config("vit", "paper")
    assert (v.model.patch_size, v.model.depth, v.model.heads, v.model.dim, v.model.mlp_dim) == (4, 12, 6, 384, 1536)
    assert (v.pretrain.optimizer, v.pretrain.lr, v.pretrain.weight_decay, v.pretrain.epochs) == ("adamw", 1e-3, 0.1, 90)
    assert (v.pretrain.warmup_steps, v.pretrain.clip_norm, v.pretrain.augment) == (10000, 1.0, ["flip", "mixup"])
    assert v.retrain == v.pretrain  # Retrain = the same recipe


def test_precedence_preset_file_flags_set(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[data]\nbatch_size = 32\nforget_class = 5\n[models.vit.pretrain]\nepochs = 7\n')
    cfg = build_config("vit", "quick", str(f), {"data.forget_class": 2}, ["pretrain.lr=0.5", "retrain.epochs=3"])
    assert cfg.data.dataset == "digits"  # preset
    assert cfg.data.batch_size == 32  # file over preset
    assert cfg.data.forget_class == 2  # flag over file
    assert cfg.pretrain.epochs == 7 and cfg.pretrain.lr == 0.5
    assert cfg.retrain.lr == 0.5 and cfg.retrain.epochs == 3  # retrain follows pretrain, plus its own keys


def test_set_values_are_typed():
    assert parse_set("pretrain.augment=crop,flip") == ("pretrain.augment", "crop,flip")
    assert parse_set("pretrain.lr=1e-3") == ("pretrain.lr", 1e-3)
    cfg = build_config("vit", "quick", sets=["pretrain.augment=crop,flip", "pretrain.lr=1", "model.dim=32"])
    assert cfg.pretrain.augment == ["crop", "flip"] and cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)
    assert coerce(3, float, "x") == 3.0
    with pytest.raises(UserError, match="x must be an integer"):
        coerce(2.5, int, "x")
    with pytest.raises(UserError, match="x must be an integer"):
        coerce(True, int, "x")


@pytest.mark.parametrize("sets, message", [
    (["pretrain.nope=1"], "unknown key pretrain.nope"),
    (["nosection=1"], "unknown key 'nosection'"),
    (["pretrain.epochs=abc"], "pretrain.epochs must be an integer"),
    (["pretrain.epochs=0"], "pretrain.epochs must be >= 1"),
    (["pretrain.optimizer=rmsprop"], "choose one of sgd, adam, adamw"),
    (["pretrain.augment=crop,rotate"], "augment may only hold"),
    (["model.heads=3"], "divisible by model.heads"),
    (["data.batch_size=0"], "batch_size must be >= 1"),
    (["noequals"], "expected KEY=VALUE"),
    (["pretrain.lr=nan"], "must be a finite number"),
    (["model.width=inf"], "must be a finite number"),
    (["lora.alpha=1e400"], "lora.alpha must be a finite number"),
    (["pretrain.epochs=9223372036854775808"], "fit in 64 bits"),
    (["pretrain.lr=99999999999999999999999"], "too large"),
    (["pretrain.lr=[0.1, 0.2]"], "must be a number, got \\[0.1, 0.2\\]"),
    (["seed=-1"], "seed must be in 0..4294967294"),
    (["seed=4294967295"], "seed must be in 0..4294967294"),
    (["data.dataset=mnist"], "unknown dataset 'mnist': choose one of cifar10, cifar100, svhn, tinyimagenet, digits, tfds:cifar10"),
    (["model.dim=0"], "model.dim must be >= 4"),
    (["model.mlp_dim=0"], "model.mlp_dim >= 1"),
    (["pretrain.momentum=1.0"], "pretrain.momentum must be in \\[0, 1\\)"),
    (["retrain.momentum=-0.1"], "retrain.momentum must be in \\[0, 1\\)"),
    (["finetune.weight_decay=-1"], "finetune.weight_decay = -1.0 is out of range: must be >= 0"),
    (["lora.alpha=0"], "lora.alpha = 0.0 is out of range: must be > 0"),
    (["methods.pruned_lora.rank=0"], "pruned_lora.rank = 0 is out of range: must be >= 1"),
    (["pruned.amount=1"], r"pruned.amount = 1.0 is out of range: must be in \[0, 1\)"),
    (["pruned_lora.amount=-0.1"], "pruned_lora.amount = -0.1 is out of range"),
    (["scrub.lr_decay_epochs=0,5"], "scrub.lr_decay_epochs = \\(0, 5\\) is out of range: must be >= 1"),
    (["scrub.lr_decay_rate=0"], "scrub.lr_decay_rate = 0.0 is out of range: must be > 0"),
    (["scrub.lrr=0.1"], "unknown hyperparameter scrub.lrr \\(did you mean 'lr'\\?\\)"),
    (["unlearn.eval_models=4"], "unlearn.eval_models is now eval.models: the evaluation's options have their own"),
    (["unlearn.relearn_lr=0.1"], "unlearn.relearn_lr is now eval.relearn_lr"),
    (["eval.models_mode=vamp"], "eval.models_mode = 'vamp' is not valid.*did you mean 'vmap'"),
    (["eval.models=1"], "eval.models \\(--eval-models\\) must be 0 \\(off\\)"),
    (["eval.relearn_fraction=1.5"], "eval.relearn_fraction must be in \\(0, 1\\)"),
    (["unlearn.scrub_lr=0.1"], "unlearn.scrub_lr is now scrub.lr: each method owns its hyperparameters"),
    (["unlearn.lora_rank=4"], "unlearn.lora_rank is now lora.rank and pruned_lora.rank"),
    (["methods.scrubb.lr=0.1"], "'scrubb' is not a method with hyperparameters \\(did you mean 'scrub'\\?\\)"),
    (["unlearn.epochs=5,0"], "unlearn.epochs must be one or more integers >= 1"),
    (["unlearn.batch_size=0"], "unlearn.batch_size must be >= 1"),
    (["data.forget_class=-1"], "forget_class must be >= 0"),
    (["model.patch_size=0"], "patch_size must be >= 1"),
])
def test_bad_overrides_are_user_errors(sets, message):
    with pytest.raises(UserError, match=message):
        build_config("vit", "quick", sets=sets)


def test_long_bad_values_are_cut_to_one_short_line():
    with pytest.raises(UserError) as info:
        build_config("vit", "quick", sets=["pretrain.lr=[" + ", ".join(["1"] * 500) + "]"])
    assert len(str(info.value)) < 200 and "..." in str(info.value)
    assert str(UserError("first\n  second\r\nthird")) == "first second third"


def test_bad_files_and_names(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nbatch_size = ")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config("vit", "quick", str(bad))
    with pytest.raises(UserError, match="does not exist"):
        build_config("vit", "quick", str(tmp_path / "missing.toml"))
    with pytest.raises(UserError, match="unknown preset"):
        build_config("vit", "nope")
    with pytest.raises(UserError, match="unknown model"):
        build_config("vgg", "quick")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trainer]\nepochs = 1\n")
    with pytest.raises(UserError, match="unknown key 'trainer'"):
        build_config("vit", "quick", str(unknown))


@pytest.mark.parametrize("toml, sets, message", [
    ("sed = 1\n", [], "unknown key 'sed' (did you mean 'seed'?)"),
    ("[pretrain]\nepoch = 3\n", [], "unknown key pretrain.epoch (did you mean 'epochs'?)"),
    ("", ["sed=1"], "unknown key 'sed' (did you mean 'seed'?)"),
    ("", ["pretrain.optimizer=adamw_"], "(did you mean 'adamw'?)"),
    ("", ["data.dataset=cifar"], "unknown dataset 'cifar' (did you mean 'cifar10'?)"),
])
def test_a_misspelled_key_or_name_names_the_closest_valid_one(tmp_path, toml, sets, message):
    f = tmp_path / "mine.toml"
    f.write_text(toml)
    with pytest.raises(UserError) as exc:
        build_config("vit", "quick", str(f), {}, sets)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UserError, match=r"unknown preset 'quik' \(did you mean 'quick'\?\)"):
        build_config("vit", "quik")
