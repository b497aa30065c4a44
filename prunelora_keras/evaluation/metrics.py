"""Unlearning metrics: UA, RA, TA, the membership-inference attacks (MIA-Efficacy), ToW, Avg. Gap.

Pure functions of arrays (logits, labels, per-sample losses) plus a seed, so each is testable
without a model. Percentages throughout.

Accuracies
- UA = 100 - accuracy on D_f (the training images to forget).
- RA = accuracy on D_r (the retained training images). TA = accuracy on the test images of the
  remaining classes (the whole test set under random-sample forgetting).

Attacks. Every attack is trained on *shadow* data whose membership is known (members: images the
model trained on, from D_r; non-members: test images it never saw), then asked about D_f. Its
MIA-Efficacy is the percentage of D_f it calls **non-member**: higher = more of D_f looks like
data the model never saw (Retrain, which never saw D_f, sits near the attack's non-member rate
on unseen data; the original model, which fitted D_f, near 0).
- ``loss_logreg`` (the paper's PyTorch reference): feature = per-sample cross-entropy; members =
  a seeded random sample of D_r (label 0), non-members = a seeded random sample of the
  remaining-class test set (label 1), sizes 9,000 : 5,000 at full scale, shrunk by one common
  factor on subsets (``attack_sizes``); ``LogisticRegression()``.
- ``confidence_svc``, ``entropy_svc``, ``m_entropy_svc`` (Jia, Liu et al. 2023, "Model sparsity
  can simplify machine unlearning", ``evaluation/SVC_MIA.py`` of OPTML-Group/Unlearn-Sparse):
  members = a seeded, class-stratified random sample of D_r of size min(|D_r|, |test|) (label 1),
  non-members = the remaining-class test set (label 0); ``SVC(C=3, gamma="auto", kernel="rbf")``
  on one feature:
  - confidence: the softmax probability of the true class, p_y (the headline column);
  - entropy: -sum_i p_i log p_i (0 log 0 = 0);
  - m_entropy (Song & Mittal 2021): -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i), with
    log clamped at log(1e-30). Unlearn-Sparse's code writes log p_i where the formula has
    log(1 - p_i), and indexes ``[:, labels]`` (every column named by any label in the batch)
    where it means each row's own label; we compute the published formula.
  Unlearn-Sparse draws its shadow members as the *first* |test| images of D_r (CIFAR's own mixed
  order there); this package's readers store images class by class, where the first images would be
  the first classes only, so the draw here is stratified: every retained class in proportion.

Each attack also reports its accuracy on its own shadow data: an attack that does no better than
predicting its larger class for everything (``degenerate``) says nothing about the model, and
the report marks its efficacy with a dagger.

Summary scores against Retrain (same epoch column): Avg. Gap (mean |difference| over UA,
MIA-Efficacy (confidence), RA, TA; lower is better) and ToW (Zhao et al. 2024: the product over
D_f, D_r and the test set of 1 - |acc - acc_retrain| / 100; 1 = Retrain's accuracies exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_FLOOR = np.log(1e-30)  # Unlearn-Sparse's clamp for log(0)
SVC_FEATURES = ("confidence", "entropy", "m_entropy")


def accuracy_pct(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percent of rows whose argmax equals the label (0 for an empty set).

    Args:
        logits: (n, classes) scores. labels: (n,) integer labels.
    Returns:
        Accuracy in percent.
    """
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0


def unlearning_accuracy(forget_logits: np.ndarray, forget_labels: np.ndarray) -> float:
    """UA = 100 - Acc(D_f), in percent."""
    return 100.0 - accuracy_pct(forget_logits, forget_labels)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy, stable in float64."""
    return -log_softmax(logits)[np.arange(len(labels)), labels]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row of a probability matrix, in nats (0 log 0 = 0)."""
    p = np.asarray(probs, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)


def _clamped_log(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), LOG_FLOOR)


def modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy: -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i).

    Low for confident correct predictions, high for confident wrong ones (unlike entropy, it
    uses the label). Logs of 0 are clamped at log(1e-30), as Unlearn-Sparse does.
    """
    p = np.asarray(probs, np.float64)
    rows = np.arange(len(labels))
    py = p[rows, labels]
    others = p * _clamped_log(1.0 - p)
    others[rows, labels] = 0.0
    return -(1.0 - py) * _clamped_log(py) - others.sum(axis=1)


def svc_feature(name: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One of the SVC attack's per-sample features (``SVC_FEATURES``) from logits and labels."""
    probs = np.exp(log_softmax(logits))
    if name == "confidence":
        return probs[np.arange(len(labels)), labels]
    if name == "entropy":
        return entropy(probs)
    if name == "m_entropy":
        return modified_entropy(probs, labels)
    raise ValueError(f"unknown SVC feature {name!r}; choose one of {SVC_FEATURES}")


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


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``size`` items with every class in proportion.

    Class c gets floor(size * n_c / n) items, and the items left over go to the classes with the
    largest remainders (ties: the lower class). All indices when ``size >= len(labels)``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / n
    quota = np.floor(exact).astype(int)
    order = np.lexsort((classes, -(exact - quota)))  # largest remainder first, then lower class
    quota[order[:size - quota.sum()]] += 1
    rng = np.random.default_rng([seed, 15485863])
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


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


def mia_svc(retain_feature: np.ndarray, test_feature: np.ndarray, forget_feature: np.ndarray,
            retain_labels: np.ndarray | None = None, seed: int = 0) -> AttackResult:
    """Jia, Liu et al.'s SVC attack on one per-sample feature (members 1, non-members 0).

    Args:
        retain_feature: the feature on D_r; shadow members are a seeded sample of it of size
            min(|D_r|, |test|), class-stratified by ``retain_labels`` (uniform when None).
        test_feature: the feature on the remaining-class test set (all of it: non-members).
        forget_feature: the feature on D_f, the samples asked about.
        seed: seeds the shadow-member draw (the RBF SVC itself is deterministic).
    Returns:
        ``AttackResult``: efficacy = percent of D_f predicted non-member.

    Example:
        >>> r = mia_svc(np.full(50, 0.99), np.linspace(0, 0.6, 50), np.full(10, 0.1))
        >>> round(r.efficacy)
        100
    """
    from sklearn.svm import SVC

    retain_feature = np.asarray(retain_feature, np.float64)
    labels = np.zeros(len(retain_feature), int) if retain_labels is None else np.asarray(retain_labels)
    n = min(len(test_feature), len(retain_feature))
    members = retain_feature[stratified_sample(labels, n, seed)]
    nonmembers = np.asarray(test_feature, np.float64)
    x = np.concatenate([members, nonmembers])[:, None]
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    efficacy = 1.0 - float(np.mean(clf.predict(np.asarray(forget_feature, np.float64)[:, None])))
    return AttackResult(100.0 * efficacy, 100.0 * clf.score(x, y), len(members), len(nonmembers))


def unlearning_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], seed: int = 0,
                       members: int = 9000, nonmembers: int = 5000) -> dict[str, float]:
    """UA, RA, TA and every attack from the logits of ``retain``, ``forget`` and ``test_retain``.

    Args:
        logits: {set name: (n, classes) logits} for the three sets.
        labels: {set name: (n,) labels} for the same sets.
        seed: seeds the attacks' shadow draws.
        members, nonmembers: the loss attack's full-scale draw sizes (see :func:`attack_sizes`).
    Returns:
        {metric: value}: UA, RA, TA, MIA_<attack> (efficacy, percent), attack_acc_<attack> (its
        shadow accuracy) and attack_degenerate_<attack> for every attack.
    """
    sets = ("retain", "forget", "test_retain")
    losses = {k: cross_entropy(logits[k], labels[k]) for k in sets}
    attacks = {"loss_logreg": mia_loss_logreg(losses["retain"], losses["test_retain"], losses["forget"],
                                              members, nonmembers, seed)}
    for feature in SVC_FEATURES:
        values = {k: svc_feature(feature, logits[k], labels[k]) for k in sets}
        attacks[f"{feature}_svc"] = mia_svc(values["retain"], values["test_retain"], values["forget"],
                                            labels["retain"], seed)
    out = {
        "UA": unlearning_accuracy(logits["forget"], labels["forget"]),
        "RA": accuracy_pct(logits["retain"], labels["retain"]),
        "TA": accuracy_pct(logits["test_retain"], labels["test_retain"]),
    }
    for name, result in attacks.items():
        out[f"MIA_{name}"] = result.efficacy
        out[f"attack_acc_{name}"] = result.attack_accuracy
        out[f"attack_degenerate_{name}"] = result.degenerate()
    return out


GAP_METRICS = ("UA", "MIA_confidence_svc", "RA", "TA")


def tug_of_war(forget_acc: float, retain_acc: float, test_acc: float, forget_ref: float, retain_ref: float,
               test_ref: float) -> float:
    """ToW (Zhao et al. 2024): prod over D_f, D_r, test of (1 - |acc - acc_retrain| / 100).

    Accuracies in percent; 1 when every accuracy equals Retrain's, 0 when one differs by 100 points.

    Example:
        >>> round(tug_of_war(10, 90, 80, 0, 100, 80), 4)
        0.81
    """
    parts = [(forget_acc, forget_ref), (retain_acc, retain_ref), (test_acc, test_ref)]
    return float(np.prod([1.0 - abs(a - b) / 100.0 for a, b in parts]))


def add_avg_gap(rows: list[dict]) -> None:
    """Each finished row's "Avg. Gap" and "ToW" against Retrain's row of the same epoch column.

    Avg. Gap: the mean absolute difference over UA, MIA-Efficacy (confidence/SVC), RA and TA, in
    percentage points (Jia et al. 2023, Fan et al. 2024). ToW: :func:`tug_of_war` on D_f, D_r and
    test accuracy. Retrain's own gap is 0 and its ToW 1; without a Retrain row there is neither.
    """
    retrain = {r["epochs"]: r for r in rows if r["paradigm"] == "retrain" and r.get("status", "ok") == "ok"}
    for r in rows:
        ref = retrain.get(r["epochs"])
        if ref is not None and r.get("status", "ok") == "ok":
            r["avg_gap"] = float(np.mean([abs(r[m] - ref[m]) for m in GAP_METRICS]))
            r["tow"] = tug_of_war(100.0 - r["UA"], r["RA"], r["TA"], 100.0 - ref["UA"], ref["RA"], ref["TA"])
