"""Typed run configuration: TOML presets from ``configs/``, a user TOML file, ``--set`` overrides.

Configuration is data. A preset is a TOML file with top-level sections (``[data]``,
``[pretrain]``, ...) that apply to every model, and ``[models.<name>.<section>]`` tables that
override them for one model. The code reads only the typed ``Config`` built here, never a raw
dict, and every key is checked: an unknown key or a value of the wrong type is a ``UserError``.

Each method's hyperparameters (``methods.hparams``) are set in ``[methods.<name>]`` tables (also
under ``[models.<model>]``) and by ``--set <name>.<key>=value`` (or ``methods.<name>.<key>``), and
checked by the method's own dataclass, as ``prunelora_keras.unlearn`` checks its keywords.

Order of precedence, lowest first: dataclass defaults, preset, ``--config FILE``, command-line
flags (``--dataset``, ``--forget-class``, ...), ``--set section.key=value``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from prunelora_keras.errors import UserError
from prunelora_keras.experiment.values import coerce, parse_set  # noqa: F401  (re-exported)
from prunelora_keras.evaluation.settings import EVAL_CHOICES, MOVED_TO_EVAL, EvalConfig, check_eval
from prunelora_keras.training.recipe import TrainConfig  # noqa: F401  (re-exported: the sections' type)
from prunelora_keras.methods.builtin_names import hparams_type, names as method_names
from prunelora_keras.methods.hparams import check_hparams
from prunelora_keras.methods.builtin_hparams import MOVED
from prunelora_keras.methods.options import (PAPER_PARADIGMS, UNLEARN_CHOICES, UnlearnConfig, check_unlearn,  # noqa: F401
    did_you_mean, unlearn_checks)

MODEL_NAMES = ("resnet18", "resnet50", "vit", "airbench")
DATASET_NAMES = ("cifar10", "cifar100", "svhn", "tinyimagenet", "digits", "tfds:cifar10")  # and folder:PATH, tfds:NAME
DATASET_PREFIXES = ("folder:", "tfds:")  # data.DATASETS; checked here so it fails before loading
# The seed also seeds numpy's
# legacy generator and scikit-learn (< 2**32), and the test split draws with ``seed + 1``.
SEED_MAX = 2**32 - 2


@dataclass
class DataConfig:
    """Where the images come from and how the class-wise unlearning split is made."""

    dataset: str = "cifar10"  # cifar10 | cifar100 | svhn | tinyimagenet | digits | folder:PATH | tfds:NAME
    data_dir: str = ""  # the data set's official files: a folder, an image-folder tree, or an archive of one
    labels: str = "fine"  # cifar100: fine (100 classes) | coarse (20 super-classes: super-class forgetting)
    image_size: int = 0  # folder:PATH: resize images to this side (0: as they are)
    forget_class: int = 3
    forget_classes: list[int] = field(default_factory=list)  # continual unlearning: forget requests in order, e.g. [3, 5, 7]
    forget_fraction: float = 0.0  # > 0: random-sample forgetting of this stratified fraction of the training set
    train_size: int = 0  # seeded stratified subsample of the training set; 0 keeps all
    test_size: int = 0  # same for the test set
    batch_size: int = 128
    eval_batch_size: int = 512
    drop_last: bool = False  # drop the last partial training batch (PyTorch's default keeps it)


@dataclass
class ModelConfig:
    """Architecture. ResNet fields apply to resnet*, ViT fields to vit, ``widths`` to airbench; the rest
    is ignored."""

    name: str = "resnet50"
    width: float = 1.0  # ResNet width multiplier (1.0 = the paper's 64/128/256/512 planes)
    widths: list[int] = field(default_factory=lambda: [64, 256, 256])  # airbench: its three groups' channels
    patch_size: int = 4  # ViT
    depth: int = 12
    heads: int = 6
    dim: int = 384
    mlp_dim: int = 1536
    weights: str = ""  # a trained original model (.keras, or a PyTorch state dict .pt/.pth) to unlearn from; "": pretrain one


@dataclass
class Config:
    """Everything one run needs, resolved for one model."""

    preset: str = "paper"
    seed: int = 0
    devices: int = 0  # data-parallel over this many local devices; 0: all of them (one on a plain CPU)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    retrain: TrainConfig = field(default_factory=TrainConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    methods: dict[str, Any] = field(default_factory=lambda: default_hparams())  # name -> its hyperparameters

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON data (tuples as lists), as results.json holds it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


TOP_LEVEL = ("seed", "devices")  # keys outside any section
SECTIONS = {"model": ModelConfig, "data": DataConfig, "pretrain": TrainConfig, "retrain": TrainConfig,
            "unlearn": UnlearnConfig, "eval": EvalConfig}
CHOICES = {
    ("model", "name"): MODEL_NAMES,
    ("pretrain", "optimizer"): ("sgd", "adam", "adamw"),
    ("retrain", "optimizer"): ("sgd", "adam", "adamw"),
    ("pretrain", "schedule"): ("constant", "cosine", "warmup_cosine", "triangle"),
    ("retrain", "schedule"): ("constant", "cosine", "warmup_cosine", "triangle"),
    ("data", "labels"): ("fine", "coarse"),
    ("pretrain", "bn"): ("update", "freeze"),
    ("retrain", "bn"): ("update", "freeze"),
    ("pretrain", "precision"): ("float32", "bfloat16"),
    ("retrain", "precision"): ("float32", "bfloat16"),
    **{("unlearn", name): choices for name, choices in UNLEARN_CHOICES.items()},  # options.py: one list, one check
    **{("eval", name): choices for name, choices in EVAL_CHOICES.items()},
}
AUGMENTATIONS = ("crop", "flip", "mixup", "translate", "altflip")


def default_hparams() -> dict[str, Any]:
    """Every registered method's hyperparameters at their defaults (methods without any left out)."""
    out = {}
    for name in method_names():
        cls = hparams_type(name)
        if dataclasses.fields(cls):
            out[name] = cls()
    return out


def apply_hparams(cfg: Config, method: str, values: Any, source: str) -> None:
    """Set method ``method``'s hyperparameters from a table ``{key: value}`` (TOML or ``--set``),
    checked by the method's dataclass (``hparams.check_hparams``)."""
    if method not in cfg.methods:
        known = list(cfg.methods)
        raise UserError(f"{source}: {method!r} is not a method with hyperparameters{did_you_mean(method, known)}; "
                        f"choose one of {', '.join(known)}")
    if not isinstance(values, dict):
        raise UserError(f"{source}: [methods.{method}] must be a table of its hyperparameters")
    current = cfg.methods[method]
    hints = typing.get_type_hints(type(current))
    merged = dataclasses.asdict(current)
    for key, value in values.items():
        tp = hints.get(key)
        if tp is not None and typing.get_origin(tp) in (list, tuple) and isinstance(value, str):
            value = coerce(value, list[typing.get_args(tp)[0]], f"{source}: {method}.{key}")  # "3,5,9"
        merged[key] = value
    try:
        cfg.methods[method] = check_hparams(type(current), merged, f"{method}.")
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None


def preset_dir() -> Path:
    """The folder holding the shipped TOML presets (installed package or source checkout)."""
    try:
        folder = Path(str(resources.files("prunelora_keras.configs")))
        if folder.is_dir() and any(folder.glob("*.toml")):
            return folder
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "configs"  # the source checkout: prunelora_keras/experiment/ -> root


def available_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.toml"))


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into one clear line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.__class__.__name__}): pass a readable TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None


def load_preset(name: str) -> dict[str, Any]:
    path = preset_dir() / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}{did_you_mean(name, available_presets())}: choose one of "
                        f"{', '.join(available_presets())}")
    return read_toml(path, "preset")


def _apply_section(obj: Any, values: dict[str, Any], section: str, source: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"{source}: [{section}] must be a table")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if section == "unlearn" and key in MOVED_TO_EVAL:
            raise UserError(f"{source}: unlearn.{key} is now eval.{MOVED_TO_EVAL[key]}: the evaluation's options have "
                            f"their own section (--set eval.{MOVED_TO_EVAL[key]}=..., or an [eval] table)")
        if section == "unlearn" and key in MOVED:
            raise UserError(f"{source}: unlearn.{key} is now {MOVED[key]}: each method owns its hyperparameters "
                            f"(--set {MOVED[key].split()[0]}=..., or a [methods.{MOVED[key].split('.')[0]}] table)")
        if key not in names:
            raise UserError(f"{source}: unknown key {section}.{key}{did_you_mean(key, names)}; valid keys: "
                            f"{', '.join(sorted(names))}")
        if isinstance(value, bool) and "true" in CHOICES.get((section, key), ()):  # a choice that reads as TOML bool
            value = "true" if value else "false"
        setattr(obj, key, coerce(value, names[key].type, f"{source}: {section}.{key}"))


def _apply_tree(cfg: Config, tree: dict[str, Any], model: str, source: str, retrain_layers: list) -> None:
    """Apply a preset-shaped TOML tree: top-level sections, then ``models.<model>`` sections.

    ``[retrain]`` tables are collected in ``retrain_layers`` rather than applied: Retrain is the
    pretraining recipe plus these explicit differences, applied once pretraining is resolved.
    """
    models = tree.get("models", {})
    if not isinstance(models, dict):
        raise UserError(f"{source}: [models] must be a table of per-model tables")
    layers = [tree, models.get(model, {})]
    for depth, layer_tree in enumerate(layers):
        if not isinstance(layer_tree, dict):
            raise UserError(f"{source}: [models.{model}] must be a table")
        for key, value in layer_tree.items():
            if key == "models" and depth == 0:
                continue
            if key in TOP_LEVEL:
                setattr(cfg, key, coerce(value, int, f"{source}: {key}"))
            elif key == "retrain":
                retrain_layers.append((value, source))
            elif key == "methods":
                if not isinstance(value, dict):
                    raise UserError(f"{source}: [methods] must be a table of per-method tables")
                for method, table in value.items():
                    apply_hparams(cfg, method, table, source)
            elif key in SECTIONS:
                _apply_section(getattr(cfg, key), value, key, source)
            else:
                valid = ", ".join([*TOP_LEVEL, "models", *SECTIONS, "methods"])
                raise UserError(f"{source}: unknown key {key!r}{did_you_mean(key, [*TOP_LEVEL, 'models', *SECTIONS, 'methods'])}; "
                                f"valid top-level keys: {valid}")


def apply_value(cfg: Config, key: str, value: Any, where: str) -> None:
    """Set one dotted key (``section.name`` or ``seed``) with type checking."""
    if key in TOP_LEVEL:
        setattr(cfg, key, coerce(value, int, where))
        return
    section, _, name = key.partition(".")
    if section == "methods" and name.count(".") == 1:  # methods.<method>.<key>
        method, _, name = name.partition(".")
        apply_hparams(cfg, method, {name: value}, where)
        return
    if section not in SECTIONS and section in cfg.methods and name:  # <method>.<key>
        apply_hparams(cfg, section, {name: value}, where)
        return
    if section not in SECTIONS or not name:
        every = [*TOP_LEVEL, *(f"{sec}.{f.name}" for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls))]
        every += [f"{m}.{f.name}" for m, h in cfg.methods.items() for f in dataclasses.fields(h)]
        raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, every)}; use "
                        f"section.key with section one of {', '.join(SECTIONS)}, or method.key with a method "
                        f"(e.g. scrub.lr; --list-keys prints every key) (or {' or '.join(TOP_LEVEL)})")
    _apply_section(getattr(cfg, section), {name: value}, section, where)


def validate(cfg: Config) -> None:
    """Ranges and choices that can be checked without data. Raises ``UserError``."""
    for (section, name), choices in CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if section not in ("unlearn", "eval") and value not in choices:  # check_unlearn and check_eval, below
            raise UserError(f"{section}.{name} = {value!r} is not valid: choose one of {', '.join(choices)}"
                            f"{did_you_mean(value, choices)}")
    try:  # the library's own validation of the unlearning options, word for word
        check_unlearn(cfg.unlearn, "unlearn.")
        check_eval(cfg.eval, "eval.")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    checks = [
        (cfg.data.dataset in DATASET_NAMES or (cfg.data.dataset.startswith(DATASET_PREFIXES)
                                                and cfg.data.dataset.partition(":")[2].strip() != ""),
         f"unknown dataset {cfg.data.dataset!r}{did_you_mean(cfg.data.dataset, DATASET_NAMES)}: choose one of "
         f"{', '.join(DATASET_NAMES)}, folder:PATH or tfds:NAME"),
        (cfg.data.image_size >= 0, "data.image_size must be >= 0 (0: images as they are)"),
        (0 <= cfg.devices <= 1 << 20, "devices must be >= 0 (0: every local device)"),
        (0 <= cfg.seed <= SEED_MAX, f"seed must be in 0..{SEED_MAX} (it seeds numpy and scikit-learn)"),
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.eval_batch_size >= 1, "data.eval_batch_size must be >= 1"),
        (cfg.data.train_size >= 0, "data.train_size must be >= 0 (0 keeps the whole training set)"),
        (cfg.data.test_size >= 0, "data.test_size must be >= 0 (0 keeps the whole test set)"),
        (cfg.data.forget_class >= 0, "data.forget_class must be >= 0"),
        (0 <= cfg.data.forget_fraction < 1, "data.forget_fraction must be in [0, 1) (0: class-wise forgetting)"),
        (len(set(cfg.data.forget_classes)) == len(cfg.data.forget_classes) and min(cfg.data.forget_classes, default=0) >= 0,
         "data.forget_classes must list distinct classes >= 0, e.g. --forget-class 3,5,7"),
        (not (cfg.data.forget_classes and cfg.data.forget_fraction),
         "continual class requests (--forget-class 3,5,...) and --forget-fraction exclude each other: choose one"),
        (not (cfg.data.forget_classes and cfg.eval.ulira),
         "--eval-ulira attacks one forget request; it does not combine with continual requests (--forget-class "
         "N,M,...): pass one class or --forget-fraction"),
        (cfg.model.width > 0, "model.width must be > 0"),
        (len(cfg.model.widths) == 3 and min(cfg.model.widths) >= 1,
         "model.widths must be three channel counts >= 1, e.g. --set model.widths=64,256,256"),
        (cfg.model.patch_size >= 1, "model.patch_size must be >= 1"),
        (cfg.model.depth >= 1 and cfg.model.heads >= 1, "model.depth and model.heads must be >= 1"),
        (cfg.model.dim >= 4 and cfg.model.mlp_dim >= 1, "model.dim must be >= 4 and model.mlp_dim >= 1"),
        (cfg.model.dim % max(cfg.model.heads, 1) == 0, "model.dim must be divisible by model.heads"),
        (cfg.model.dim % 4 == 0, "model.dim must be divisible by 4 (2-D sin-cos position embedding)"),
    ]
    for section in ("pretrain", "retrain"):
        t: TrainConfig = getattr(cfg, section)
        checks += [
            (t.epochs >= 1, f"{section}.epochs must be >= 1"),
            (t.lr > 0, f"{section}.lr must be > 0"),
            (0 <= t.momentum < 1, f"{section}.momentum must be in [0, 1)"),
            (t.weight_decay >= 0, f"{section}.weight_decay must be >= 0"),
            (t.clip_norm >= 0, f"{section}.clip_norm must be >= 0 (0 disables clipping)"),
            (t.warmup_steps >= 0, f"{section}.warmup_steps must be >= 0"),
            (t.mixup_alpha > 0, f"{section}.mixup_alpha must be > 0"),
            (set(t.augment) <= set(AUGMENTATIONS), f"{section}.augment may only hold {', '.join(AUGMENTATIONS)}"),
            (not {"flip", "altflip"} <= set(t.augment), f"{section}.augment: flip and altflip exclude each other; keep one"),
            (0 <= t.label_smoothing < 1, f"{section}.label_smoothing must be in [0, 1)"),
            (0 < t.peak_fraction < 1 and t.start_factor >= 0 and t.end_factor >= 0,
             f"{section}: the triangle needs 0 < peak_fraction < 1 and start_factor, end_factor >= 0"),
            (t.norm_lr_scale > 0, f"{section}.norm_lr_scale must be > 0 (1: the same rate as the weights)"),
            (t.norm_lr_scale == 1 and not t.nesterov or t.optimizer == "sgd",
             f"{section}: nesterov and norm_lr_scale apply to optimizer sgd; set optimizer = \"sgd\" or drop them"),
            (t.lookahead_every >= 0 and 0 <= t.lookahead_decay <= 1 and t.lookahead_power >= 0,
             f"{section}: lookahead_every must be >= 0 (0: off), lookahead_decay in [0, 1], lookahead_power >= 0"),
            (t.whiten_bias_epochs >= 0, f"{section}.whiten_bias_epochs must be >= 0 (0: the bias trains throughout)"),
        ]
    with_files = ("cifar10", "cifar100", "svhn", "tinyimagenet")  # the data sets read from their official files
    if cfg.data.data_dir and cfg.data.dataset not in with_files:
        checks.append((False, f"data.data_dir (--data-dir) applies to --dataset {', '.join(with_files)}; "
                              f"{cfg.data.dataset} comes from its own package or path: drop --data-dir"))
    if cfg.data.data_dir and not Path(cfg.data.data_dir).expanduser().exists():
        fix = (" or drop --data-dir to let Keras download CIFAR-10 (docs/usage.md#getting-cifar-10)"
               if cfg.data.dataset == "cifar10" else "")
        checks.append((False, f"--data-dir {cfg.data.data_dir} does not exist: pass the {cfg.data.dataset} folder or "
                              f"archive{fix}"))
    if cfg.data.labels != "fine" and cfg.data.dataset != "cifar100":
        checks.append((False, f"data.labels = {cfg.data.labels!r} applies to --dataset cifar100 only (its 20 "
                              "super-classes); drop it"))
    if cfg.model.weights and not Path(cfg.model.weights).expanduser().is_file():
        checks.append((False, f"model.weights {cfg.model.weights} is not a file: pass a .keras or .pt/.pth file, or "
                              "leave it empty to pretrain the original model"))
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def build_config(
    model: str,
    preset: str = "paper",
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Resolve the typed configuration for one model. ``overrides`` are dotted keys from CLI flags."""
    if model not in MODEL_NAMES:
        raise UserError(f"unknown model {model!r}{did_you_mean(model, MODEL_NAMES)}: choose one of "
                        f"{', '.join(MODEL_NAMES)}")
    cfg = Config(preset=preset)
    retrain_layers: list[tuple[Any, str]] = []
    _apply_tree(cfg, load_preset(preset), model, f"preset {preset}", retrain_layers)
    if config_file:
        _apply_tree(cfg, read_toml(Path(config_file), "config file"), model, f"config {config_file}", retrain_layers)
    cfg.model.name = model
    pairs = [(key, value, "command line") for key, value in (overrides or {}).items()]
    pairs += [(*parse_set(assignment), "--set") for assignment in sets or []]
    for key, value, where in pairs:
        if key.startswith("retrain."):
            retrain_layers.append(({key.partition(".")[2]: value}, where))
        else:
            apply_value(cfg, key, value, where)
    cfg.retrain = dataclasses.replace(cfg.pretrain, augment=list(cfg.pretrain.augment))
    for values, source in retrain_layers:
        _apply_section(cfg.retrain, values, "retrain", source)
    validate(cfg)
    return cfg
