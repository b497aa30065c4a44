"""The built-in methods' hyperparameters: one frozen dataclass per method (``hparams.hparam`` fields).

Kept apart from the machinery (``hparams.py``: declaring, checking and describing fields) so that each
stays one job; like it, this module imports neither Keras nor JAX, so that the command checks every key
before anything heavy is imported. ``BUILTIN_HPARAMS`` maps each built-in method to its dataclass (the
registry holds the same ones; a test checks), ``MOVED`` where each option of the old flat ``unlearn``
section went.

Example:
    >>> ScrubHParams().temperature
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelora_keras.methods.hparams import (AT_LEAST_ONE, LR_SEARCH, NON_NEGATIVE, POSITIVE, UNIT_CLOSED, UNIT_OPEN,
                                             HParams, Search, hparam)

@dataclass(frozen=True)
class FinetuneHParams(HParams):
    """The paper's paradigms (REFERENCE.md): Adam at a constant 1e-3 on D_r."""

    optimizer: str = hparam("adam", "the optimiser", choices=("sgd", "adam", "adamw"))
    lr: float = hparam(1e-3, "learning rate (constant)", check=POSITIVE, search=LR_SEARCH)
    weight_decay: float = hparam(0.0, "weight decay (Adam: torch's L2 form; AdamW: decoupled)", check=NON_NEGATIVE)
    l1: float = hparam(0.0, "> 0: a decaying l1 penalty on the trained variables ('LoRA + l1')", check=NON_NEGATIVE)


@dataclass(frozen=True)
class PrunedHParams(FinetuneHParams):
    """Structured L2 pruning of the prune targets' output units, then fine-tuning."""

    amount: float = hparam(0.5, "fraction of each target's output units (and heads) zeroed", check=UNIT_OPEN,
                           search=Search("float", 0.1, 0.9))
    mode: str = hparam("reference", "reference: zeros once (torch prune.remove); persistent: enforced "
                       "after every update", choices=("reference", "persistent"))


@dataclass(frozen=True)
class LoRAHParams(FinetuneHParams):
    """LoRA adapters on the frozen base (peft's defaults of the reference)."""

    rank: int = hparam(8, "adapter rank", check=AT_LEAST_ONE, search=Search("choice", choices=(4, 8, 16, 32)))
    alpha: float = hparam(16.0, "adapter scale alpha (the update is alpha / rank x B A)", check=POSITIVE)
    dropout: float = hparam(0.1, "dropout on the adapter's input", check=UNIT_OPEN)


@dataclass(frozen=True)
class PrunedLoRAHParams(LoRAHParams, PrunedHParams):
    """PruneLoRA: pruned's pruning (amount, mode), then lora's adapters (rank, alpha, dropout)."""


@dataclass(frozen=True)
class SGDHParams(HParams):
    """The code bases' SGD (OPTML-Group/Unlearn-Sparse): momentum 0.9, coupled weight decay 5e-4."""

    lr: float = hparam(0.01, "learning rate", check=POSITIVE, search=LR_SEARCH)
    momentum: float = hparam(0.9, "SGD momentum", check=UNIT_OPEN)
    weight_decay: float = hparam(5e-4, "coupled weight decay (added to the gradient)", check=NON_NEGATIVE)


@dataclass(frozen=True)
class GAHParams(SGDHParams):
    """Gradient ascent on D_f."""

    lr: float = hparam(1e-4, "learning rate", check=POSITIVE, search=LR_SEARCH)


RL_LABELS = ("per_batch", "once_other")
RL_ORDERS = ("forget_first", "mixed")


@dataclass(frozen=True)
class RLHParams(SGDHParams):
    """Random labels on D_f, trained with D_r."""

    lr: float = hparam(0.013, "learning rate", check=POSITIVE, search=LR_SEARCH)
    labels: str = hparam("per_batch", "per_batch: a new label from all classes each epoch (the code bases); "
                         "once_other: one label per image, never its class", choices=RL_LABELS)
    order: str = hparam("forget_first", "each epoch: forget_first: every D_f batch, then every D_r batch (their "
                        "CIFAR-10 and SVHN code); mixed: D_r and D_f shuffled together (their CIFAR-100 and "
                        "TinyImageNet code)", choices=RL_ORDERS)


@dataclass(frozen=True)
class L1SparseHParams(SGDHParams):
    """Fine-tuning on D_r with an l1 penalty decaying linearly to 0."""

    lr: float = hparam(0.01, "learning rate", check=POSITIVE, search=LR_SEARCH)
    alpha: float = hparam(1e-4, "l1 weight at the first epoch", check=NON_NEGATIVE, search=Search("log", 1e-6, 1e-2))


@dataclass(frozen=True)
class SalUnHParams(RLHParams):
    """Random labels on the most salient weights."""

    ratio: float = hparam(0.5, "fraction of the weights the saliency mask lets move",
                          check=(lambda v: 0 < v <= 1, "must be in (0, 1]"), search=Search("float", 0.1, 1.0))


@dataclass(frozen=True)
class NegGradPlusHParams(SGDHParams):
    """alpha x CE(D_r) - (1 - alpha) x CE(D_f) (Kurmanji et al. 2023) with the authors' optimiser (meghdadk/SCRUB,
    ``negative_grad``: plain SGD, lr 0.01, no momentum, no weight decay)."""

    momentum: float = hparam(0.0, "SGD momentum (the authors' negative_grad: none)", check=UNIT_OPEN)
    weight_decay: float = hparam(0.0, "coupled weight decay (the authors' negative_grad: none)", check=NON_NEGATIVE)
    alpha: float = hparam(0.999, "weight of the retain loss", check=UNIT_CLOSED, search=Search("float", 0.5, 1.0))
    forget_batch: int = hparam(0, "forget batch size (0: the retain batch size, capped at |D_f|)", check=NON_NEGATIVE)


@dataclass(frozen=True)
class ScrubHParams(SGDHParams):
    """SCRUB's published defaults (meghdadk/SCRUB)."""

    lr: float = hparam(5e-4, "learning rate", check=POSITIVE, search=LR_SEARCH)
    alpha: float = hparam(0.001, "weight of the KL on D_r's min-steps", check=NON_NEGATIVE)
    gamma: float = hparam(0.99, "weight of the cross-entropy on D_r's min-steps", check=NON_NEGATIVE)
    temperature: float = hparam(4.0, "distillation temperature", check=POSITIVE, search=Search("float", 0.5, 5.0))
    msteps: int = hparam(2, "epochs that start with max-steps on D_f", check=NON_NEGATIVE)
    forget_batch: int = hparam(512, "forget batch size of the max-steps (the authors' forget_loader; their unused "
                               "del_batch_size is 32)", check=AT_LEAST_ONE)
    lr_decay_epochs: tuple[int, ...] = hparam((3, 5, 9), "the lr is multiplied by lr_decay_rate after each of "
                                              "these epochs (empty: no decay)", check=AT_LEAST_ONE)
    lr_decay_rate: float = hparam(0.1, "the step decay's factor", check=POSITIVE)


@dataclass(frozen=True)
class SSDHParams(HParams):
    """Selective Synaptic Dampening's published defaults (if-loops/selective-synaptic-dampening)."""

    alpha: float = hparam(10.0, "selection: dampen where the D_f importance > alpha x the training data's",
                          check=POSITIVE, search=Search("log", 0.1, 100.0))
    dampening: float = hparam(1.0, "lambda: a selected weight is scaled by min(lambda x imp_D / imp_f, 1)",
                              check=POSITIVE, search=Search("log", 0.01, 10.0))
    grad_batch: int = hparam(64, "batch size of the importance passes (the squared gradient of each batch's mean "
                             "loss, averaged over batches)", check=AT_LEAST_ONE)


@dataclass(frozen=True)
class BadTeacherHParams(HParams):
    """Bad Teacher's published run (vikram2000b/bad-teaching-unlearning): Adam 1e-4, T 1, 30% of D_r."""

    lr: float = hparam(1e-4, "learning rate (Adam)", check=POSITIVE, search=LR_SEARCH)
    temperature: float = hparam(1.0, "distillation temperature of both teachers", check=POSITIVE,
                                search=Search("float", 0.5, 5.0))
    retain_fraction: float = hparam(0.3, "fraction of D_r drawn (once, seeded) to distil from the original",
                                    check=(lambda v: 0 < v <= 1, "must be in (0, 1]"), search=Search("float", 0.05, 1.0))


@dataclass(frozen=True)
class MSGHParams(SGDHParams):
    """Masked Small Gradients, the NeurIPS 2023 challenge's second entry as Deep Unlearn runs it (kgltop2)."""

    lr: float = hparam(1e-3, "peak learning rate (linear warm-up to the middle epoch, then down)", check=POSITIVE,
                       search=LR_SEARCH)
    init_rate: float = hparam(0.3, "fraction of each layer's kernel re-initialised: the smallest |gradient|",
                              check=UNIT_CLOSED, search=Search("float", 0.05, 0.95))
    kept_scale: float = hparam(0.1, "gradient scale of the kept kernel entries during the fine-tune",
                               check=NON_NEGATIVE)
    grad_batch: int = hparam(64, "batch size of the D_r part of the gradient pass", check=AT_LEAST_ONE)
    layers: str = hparam("conv", "conv: Conv2D kernels (the reference); all: Conv2D and Dense kernels",
                         choices=("conv", "all"))

@dataclass(frozen=True)
class BoundaryShrinkHParams(SGDHParams):
    """Boundary Shrink (Chen et al. 2023): one FGSM step on the original picks each forget image's nearest
    wrong class, then SGD on D_f with those labels; the optimiser of the authors' code (lr 1e-5, momentum
    0.9, no weight decay; SalUn's re-implementation runs its default lr 0.01 with weight decay 5e-4)."""

    lr: float = hparam(1e-5, "learning rate (the authors' code; SalUn's default unlearn_lr is 0.01)", check=POSITIVE,
                       search=Search("log", 1e-6, 0.1))
    weight_decay: float = hparam(0.0, "coupled weight decay (the authors' code: none)", check=NON_NEGATIVE)
    bound: float = hparam(0.1, "the FGSM step on [0, 1] pixels (the paper's, hard-coded in both code bases)",
                          check=POSITIVE, search=Search("log", 0.01, 0.5))


@dataclass(frozen=True)
class BoundaryExpandingHParams(SGDHParams):
    """Boundary Expanding (Chen et al. 2023): a shadow class on the head takes D_f, then is removed; the
    optimiser of the authors' code (lr 1e-5, momentum 0.9, no weight decay)."""

    lr: float = hparam(1e-5, "learning rate (the authors' code; SalUn's default unlearn_lr is 0.01)", check=POSITIVE,
                       search=Search("log", 1e-6, 0.1))
    weight_decay: float = hparam(0.0, "coupled weight decay (the authors' code: none)", check=NON_NEGATIVE)
    shadow_init: str = hparam("xavier", "the shadow unit's weights: xavier (Xavier-normal, zero bias: the "
                              "authors' code) or torch (PyTorch's Linear default, uniform +-1/sqrt(fan_in) with a bias: "
                              "SalUn's)", choices=("xavier", "torch"))


@dataclass(frozen=True)
class AMUNHParams(SGDHParams):
    """AMUN (Ebrahimpour-Boroojeny et al. 2025) as github.com/Ali-E/AMUN runs it: L2 PGD on the original until
    each forget image's prediction changes, then SGD on D_r + D_f + those adversarial images."""

    lr: float = hparam(0.01, "learning rate of the first epoch", check=POSITIVE, search=LR_SEARCH)
    lr_decay_rate: float = hparam(0.1, "the lr is multiplied by this after every epoch (their StepLR(1, 0.1))",
                                  check=POSITIVE)
    eps: float = hparam(0.04, "the attack's first L2 radius on [0, 1] pixels", check=POSITIVE)
    steps: int = hparam(50, "PGD steps per radius (step size radius / 10)", check=AT_LEAST_ONE)
    max_rounds: int = hparam(12, "radii tried, each twice the last, before an image's attack stops unflipped "
                             "(theirs never stops; 0.04 x 2^11 exceeds any 32x32x3 image's [0, 1] box)",
                             check=AT_LEAST_ONE)
    remain: str = hparam("use", "use: train on D_r + D_f + the adversarial images (AMUN); no_use: D_f + the "
                         "adversarial images only (their 'AMUN without D_r')", choices=("use", "no_use"))


# the built-in methods' dataclasses by name (``methods.registry`` holds the same ones; a test checks)
BUILTIN_HPARAMS: dict[str, type[HParams]] = {
    "retrain": HParams, "finetune": FinetuneHParams, "pruned": PrunedHParams, "lora": LoRAHParams,
    "pruned_lora": PrunedLoRAHParams, "ga": GAHParams, "rl": RLHParams, "l1_sparse": L1SparseHParams,
    "salun": SalUnHParams, "neggrad_plus": NegGradPlusHParams, "scrub": ScrubHParams, "ssd": SSDHParams,
    "bad_teacher": BadTeacherHParams, "msg": MSGHParams, "boundary_shrink": BoundaryShrinkHParams,
    "boundary_expanding": BoundaryExpandingHParams, "amun": AMUNHParams,
}

# where each option of the old flat ``unlearn`` section went (the command names the new key)
MOVED: dict[str, str] = {
    "optimizer": "finetune.optimizer (and pruned., lora., pruned_lora.)",
    "lr": "finetune.lr (and pruned.lr, lora.lr, pruned_lora.lr)",
    "weight_decay": "finetune.weight_decay (and pruned., lora., pruned_lora.)",
    "paradigm_l1": "finetune.l1 (and pruned.l1, lora.l1, pruned_lora.l1)",
    "prune_amount": "pruned.amount and pruned_lora.amount", "prune_mode": "pruned.mode and pruned_lora.mode",
    "lora_rank": "lora.rank and pruned_lora.rank", "lora_alpha": "lora.alpha and pruned_lora.alpha",
    "lora_dropout": "lora.dropout and pruned_lora.dropout",
    "baseline_momentum": "ga.momentum (and rl., l1_sparse., salun., neggrad_plus., scrub.)",
    "baseline_weight_decay": "ga.weight_decay (and rl., l1_sparse., salun., neggrad_plus., scrub.)",
    "ga_lr": "ga.lr", "rl_lr": "rl.lr", "rl_labels": "rl.labels and salun.labels", "l1_lr": "l1_sparse.lr",
    "l1_alpha": "l1_sparse.alpha", "salun_lr": "salun.lr", "salun_ratio": "salun.ratio",
    "neggrad_alpha": "neggrad_plus.alpha", "neggrad_lr": "neggrad_plus.lr",
    "neggrad_forget_batch": "neggrad_plus.forget_batch",
    **{f"scrub_{k}": f"scrub.{k}" for k in ("lr", "alpha", "gamma", "temperature", "msteps", "forget_batch",
                                            "lr_decay_epochs", "lr_decay_rate")},
}
