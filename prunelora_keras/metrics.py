"""Unlearning metrics: UA, RA, TA and two membership-inference attacks (MIA-Efficacy).

Pure functions of arrays (logits, labels, per-sample losses) plus a seed, so each is testable
without a model. Percentages throughout.

- UA = 100 - accuracy on D_f (training images of the forget class).
- RA = accuracy on D_r. TA = accuracy on the test images of the remaining classes.
- ``loss_logreg`` (the reference's MIA): per-sample cross-entropy losses; members = a random
  sample of D_r (label 0), non-members = a random sample of the remaining-class test set
  (label 1); sklearn ``LogisticRegression()`` on the 1-D loss; efficacy = fraction of D_f
  predicted non-member. At full CIFAR-10 scale the samples are 9,000 and 5,000.
- ``confidence_svc`` (Jia, Liu et al. 2023, "Model sparsity can simplify machine unlearning",
  SVC_MIA forget efficacy): feature = softmax probability of the true class; shadow members =
  the first |test| samples of D_r (label 1), shadow non-members = the remaining-class test set
  (label 0); ``SVC(C=3, gamma="auto", kernel="rbf")``; efficacy = fraction of D_f predicted
  non-member.

Each attack also reports its accuracy on its own shadow data: an attack that cannot tell members
from non-members (about 50%, or one class predicted for everything) makes the efficacy meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def accuracy_pct(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0


def unlearning_accuracy(forget_logits: np.ndarray, forget_labels: np.ndarray) -> float:
    """UA = 100 - Acc(D_f), in percent."""
    return 100.0 - accuracy_pct(forget_logits, forget_labels)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy, stable in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def true_class_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.exp(-cross_entropy(logits, labels))


@dataclass
class AttackResult:
    efficacy: float  # percent of D_f predicted non-member
    attack_accuracy: float  # percent correct on the attack's own shadow (training) data
    n_members: int
    n_nonmembers: int

    def majority_pct(self) -> float:
        """Shadow accuracy of the attack that predicts the larger class for everything."""
        return 100.0 * max(self.n_members, self.n_nonmembers) / (self.n_members + self.n_nonmembers)

    def degenerate(self) -> bool:
        """True when the attack does no better on its shadow data than predicting the larger class
        for everything (within 2 points): its efficacy then says nothing about the model."""
        return self.attack_accuracy < self.majority_pct() + 2.0


def attack_sizes(n_retain: int, n_test: int, members: int = 9000, nonmembers: int = 5000) -> tuple[int, int]:
    """How many members and non-members the loss attack draws.

    The reference draws 9,000 retain and 5,000 test losses from the full CIFAR-10 split. On a
    subset both counts shrink by one common factor, so the attack keeps the reference's 9:5 class
    balance: shrinking each by its own set's fraction would let a subset whose test set is large
    next to its training set (e.g. 900 retain, 1,800 test) hand the logistic regression a 15:85
    majority that it learns to predict for everything (a degenerate attack).
    """
    scale = min(1.0, n_retain / members, n_test / nonmembers)
    return max(1, int(members * scale)), max(1, int(nonmembers * scale))


def mia_loss_logreg(retain_losses: np.ndarray, test_losses: np.ndarray, forget_losses: np.ndarray,
                    members: int = 9000, nonmembers: int = 5000, seed: int = 0) -> AttackResult:
    """The reference's attack on per-sample losses (members 0, non-members 1).

    ``members`` and ``nonmembers`` are the full-scale draw sizes; see :func:`attack_sizes`.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n_m, n_n = attack_sizes(len(retain_losses), len(test_losses), members, nonmembers)
    members = rng.choice(retain_losses, n_m, replace=False)
    nonmembers = rng.choice(test_losses, n_n, replace=False)
    x = np.concatenate([members, nonmembers])[:, None]
    y = np.concatenate([np.zeros(n_m), np.ones(n_n)])
    clf = LogisticRegression().fit(x, y)
    efficacy = float(np.mean(clf.predict(np.asarray(forget_losses)[:, None]) == 1))
    return AttackResult(100.0 * efficacy, 100.0 * clf.score(x, y), n_m, n_n)


def mia_confidence_svc(retain_probs: np.ndarray, test_probs: np.ndarray, forget_probs: np.ndarray,
                       seed: int = 0) -> AttackResult:
    """Jia, Liu et al.'s SVC_MIA on the true-class probability (members 1, non-members 0).

    Deterministic (SVC with an RBF kernel has no random state); ``seed`` is accepted for a
    uniform interface.
    """
    from sklearn.svm import SVC

    del seed
    n = min(len(test_probs), len(retain_probs))
    members = np.asarray(retain_probs)[:n]
    nonmembers = np.asarray(test_probs)
    x = np.concatenate([members, nonmembers])[:, None]
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    efficacy = 1.0 - float(np.mean(clf.predict(np.asarray(forget_probs)[:, None])))
    return AttackResult(100.0 * efficacy, 100.0 * clf.score(x, y), len(members), len(nonmembers))


def unlearning_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], seed: int = 0,
                       members: int = 9000, nonmembers: int = 5000) -> dict[str, float]:
    """All metrics from the logits of ``retain``, ``forget`` and ``test_retain`` (dicts keyed by set)."""
    losses = {k: cross_entropy(logits[k], labels[k]) for k in ("retain", "forget", "test_retain")}
    probs = {k: np.exp(-v) for k, v in losses.items()}
    loss_attack = mia_loss_logreg(losses["retain"], losses["test_retain"], losses["forget"],
                                  members, nonmembers, seed)
    conf_attack = mia_confidence_svc(probs["retain"], probs["test_retain"], probs["forget"], seed)
    return {
        "UA": unlearning_accuracy(logits["forget"], labels["forget"]),
        "MIA_loss_logreg": loss_attack.efficacy,
        "MIA_confidence_svc": conf_attack.efficacy,
        "RA": accuracy_pct(logits["retain"], labels["retain"]),
        "TA": accuracy_pct(logits["test_retain"], labels["test_retain"]),
        "attack_acc_loss_logreg": loss_attack.attack_accuracy,
        "attack_acc_confidence_svc": conf_attack.attack_accuracy,
        "attack_degenerate_loss_logreg": loss_attack.degenerate(),
        "attack_degenerate_confidence_svc": conf_attack.degenerate(),
    }


GAP_METRICS = ("UA", "MIA_confidence_svc", "RA", "TA")


def add_avg_gap(rows: list[dict]) -> None:
    """Each finished row's "Avg. Gap": the mean absolute difference to Retrain (same epoch column)
    over UA, MIA-Efficacy (confidence/SVC, the attack of the SalUn line of work), RA and TA, in
    percentage points; the closeness-to-exact-unlearning summary of Jia et al. 2023 and Fan et al.
    2024. Retrain's own gap is 0; without a Retrain row there is no gap."""
    retrain = {r["epochs"]: r for r in rows if r["paradigm"] == "retrain" and r.get("status", "ok") == "ok"}
    for r in rows:
        ref = retrain.get(r["epochs"])
        if ref is not None and r.get("status", "ok") == "ok":
            r["avg_gap"] = float(np.mean([abs(r[m] - ref[m]) for m in GAP_METRICS]))
