"""Numbers from predictions: accuracy and friends (scikit-learn), calibration, bootstrap intervals, McNemar, temperature.

Everything takes integer labels (N,) and probabilities (N x C) in the model's class order; scikit-learn and
SciPy are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ferkit.scoring import validation_metrics


def classification_metrics(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class P/R/F1/support, macro/weighted F1, confusion matrices, top-2, log-loss.

    Accuracy, macro-F1 and log-loss are ferkit.scoring's (the trainer's validation uses the same definitions);
    macro-F1 and balanced accuracy average over the classes present in `y`.
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    n_cls = len(classes)
    if len(y) == 0:
        raise ValueError("no items to evaluate")
    pred = prob.argmax(1)
    labels = list(range(n_cls))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    rows = cm.sum(1, keepdims=True)
    cm_norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    with warnings.catch_warnings():
        # sklearn warns when predictions use a class the data lacks; that is expected with a bigger model.
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(y, pred)
    head = validation_metrics(y, prob)
    return {
        "n": int(len(y)),
        "accuracy": head["acc"],
        "balanced_accuracy": float(bal),
        "macro_f1": head["macro_f1"],
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "top2_accuracy": top_k_accuracy(y, prob, 2),
        "log_loss": head["loss"],
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
        "confusion_normalized": cm_norm.round(6).tolist(),
    }


def top_k_accuracy(y: np.ndarray, prob: np.ndarray, k: int) -> float:
    """Share of items whose true class is among the k most probable ones (1.0 when k >= number of classes)."""
    from sklearn.metrics import top_k_accuracy_score

    if prob.shape[1] <= k:
        return 1.0
    return float(top_k_accuracy_score(y, prob, k=k, labels=list(range(prob.shape[1]))))


def reliability(y: np.ndarray, prob: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, and the per-bin numbers for the diagram.

    ECE = sum over bins of (bin share) * |accuracy in bin - mean confidence in bin|, on the top-1 prediction.
    """
    conf = prob.max(1).astype(np.float64)
    correct = (prob.argmax(1) == y).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to the first bin.
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, acc_sum / count, np.nan)
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
    ece = float(np.nansum(count / max(len(y), 1) * np.abs(acc - mean_conf)))
    return {
        "ece": ece,
        "bins": bins,
        "count": count.astype(int).tolist(),
        "accuracy": [None if np.isnan(a) else float(a) for a in acc],
        "confidence": [None if np.isnan(c) else float(c) for c in mean_conf],
    }


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 15) -> float:
    return reliability(y, prob, bins)["ece"]


def bootstrap_ci(
    y: np.ndarray, pred: np.ndarray, n_classes: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for accuracy and macro-F1, all resamples at once.

    One (n_boot x N) index matrix; per-resample confusion matrices come from a single bincount.
    Macro-F1 averages over the classes present in the full `y`, as in `classification_metrics`.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    n = len(y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    acc = (y == pred)[idx].mean(1)
    cm = bootstrap_confusions(y, pred, idx, n_classes)
    f1 = f1_from_confusions(cm)
    present = np.bincount(y, minlength=n_classes) > 0
    macro = f1[:, present].mean(1)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {
        "accuracy": [float(np.percentile(acc, lo)), float(np.percentile(acc, hi))],
        "macro_f1": [float(np.percentile(macro, lo)), float(np.percentile(macro, hi))],
        "n_boot": n_boot,  # type: ignore[dict-item]
        "seed": seed,  # type: ignore[dict-item]
        "level": level,  # type: ignore[dict-item]
    }


def mean_over_groups_ci(
    groups: list[tuple[np.ndarray, np.ndarray]], n_classes: int, n_boot: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The unweighted mean over groups (datasets) of accuracy and macro-F1, each group's from its own (y, pred), with
    percentile bootstrap intervals that resample within each group: every group counts once whatever its size, and
    keeps its size in every resample (a stratified bootstrap)."""
    rng = np.random.default_rng(seed)
    accs, f1s, acc0, f10 = [], [], [], []
    for y, pred in groups:
        y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
        present = np.bincount(y, minlength=n_classes) > 0
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        accs.append((y == pred)[idx].mean(1))
        f1s.append(f1_from_confusions(bootstrap_confusions(y, pred, idx, n_classes))[:, present].mean(1))
        acc0.append(float((y == pred).mean()))
        full = bootstrap_confusions(y, pred, np.arange(len(y))[None], n_classes)
        f10.append(float(f1_from_confusions(full)[0, present].mean()))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    acc, f1 = np.mean(accs, axis=0), np.mean(f1s, axis=0)
    return {
        "groups": len(groups),
        "accuracy": float(np.mean(acc0)),
        "accuracy_ci95": [float(np.percentile(acc, lo)), float(np.percentile(acc, hi))],
        "macro_f1": float(np.mean(f10)),
        "macro_f1_ci95": [float(np.percentile(f1, lo)), float(np.percentile(f1, hi))],
        "n_boot": n_boot, "seed": seed, "level": level,
    }


def paired_difference_ci(
    correct_a: np.ndarray, correct_b: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000,
    seed: int = 0, level: float = 0.95,
) -> dict[str, Any]:
    """B's accuracy minus A's on the same items, with a paired percentile bootstrap interval (the same resampled
    items for both). With `groups` (a group id per item): the difference of the unweighted means over groups,
    resampled within each group."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("a paired comparison needs the same items for both models")
    g = np.zeros(len(a), dtype=np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    diff = b - a
    point, boots = [], []
    for k in np.unique(g):
        d = diff[g == k]
        point.append(float(d.mean()))
        boots.append(d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    mean = np.mean(boots, axis=0)
    ci = [float(np.percentile(mean, lo)), float(np.percentile(mean, hi))]
    return {"difference": float(np.mean(point)), "ci95": ci, "significant": not ci[0] <= 0 <= ci[1],
            "n_boot": n_boot, "seed": seed, "level": level}


def bootstrap_confusions(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """(B x C x C) confusion matrices of the resamples given by the index rows of `idx`."""
    b = idx.shape[0]
    cell = (y[idx] * n_classes + pred[idx]) + (np.arange(b)[:, None] * n_classes * n_classes)
    return np.bincount(cell.ravel(), minlength=b * n_classes * n_classes).reshape(b, n_classes, n_classes)


def f1_from_confusions(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 (B x C) from confusion matrices (B x C x C); 0 where a class is neither true nor predicted."""
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    denom = cm.sum(2) + cm.sum(1)  # 2tp + fn + fp
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """McNemar's test on paired right/wrong outcomes: exact binomial p-value and chi-square with continuity correction.

    b = items only A gets right, c = items only B gets right; under "equal accuracy" b ~ Binomial(b + c, 1/2).
    """
    from scipy.stats import binomtest, chi2

    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape:
        raise ValueError("McNemar needs the same items for both models")
    b = int((a & ~bb).sum())
    c = int((~a & bb).sum())
    if b + c == 0:
        return {"a_only": 0, "b_only": 0, "p_exact": 1.0, "chi2": 0.0, "p_chi2": 1.0}
    p_exact = float(binomtest(min(b, c), b + c, 0.5).pvalue)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return {"a_only": b, "b_only": c, "p_exact": min(p_exact, 1.0), "chi2": float(stat), "p_chi2": float(chi2.sf(stat, 1))}


def fit_temperature(y: np.ndarray, prob: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log(prob) / T) on (y, prob).

    `prob` must be uncalibrated (T = 1). A bounded 1-D search over log T in [1/20, 20].
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z = np.log(np.clip(np.asarray(prob, np.float64), 1e-12, 1.0))
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def vote_agreement(pred: np.ndarray, soft: np.ndarray) -> dict[str, float]:
    """Against annotators' vote distributions (FER+): how often the prediction got at least one vote,
    and the mean share of votes it got (the chance a random annotator agrees)."""
    got = soft[np.arange(len(pred)), pred]
    return {"in_votes_accuracy": float((got > 0).mean()), "mean_vote_share": float(got.mean())}


def summarize(
    y: np.ndarray, prob: np.ndarray, prob_raw: np.ndarray, classes: list[str], calibrated: bool,
    soft: np.ndarray | None = None, train_copy: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """The metrics block of metrics.json for labels `y` and (calibrated, uncalibrated) probabilities."""
    m = classification_metrics(y, prob, classes)
    pred = prob.argmax(1)
    m["ci95"] = bootstrap_ci(y, pred, len(classes), n_boot=n_boot, seed=seed)
    rel = reliability(y, prob)
    m["ece"] = rel["ece"]
    cal: dict[str, Any] = {"reliability": rel}
    if calibrated:
        rel_raw = reliability(y, prob_raw)
        cal.update(ece_uncalibrated=rel_raw["ece"], reliability_uncalibrated=rel_raw)
    m["calibration"] = cal
    m["votes"] = vote_agreement(pred, soft) if soft is not None else None
    m["train_copies"] = None
    if train_copy is not None:
        clean = ~train_copy
        block: dict[str, Any] = {"n_copies": int(train_copy.sum()), "n_without": int(clean.sum())}
        if clean.any():
            block["accuracy_without"] = float((pred[clean] == y[clean]).mean())
            cm = np.zeros((1, len(classes), len(classes)), np.int64)
            np.add.at(cm[0], (y[clean], pred[clean]), 1)
            present = np.bincount(y[clean], minlength=len(classes)) > 0
            block["macro_f1_without"] = float(f1_from_confusions(cm)[0, present].mean())
        if train_copy.any():
            block["accuracy_on_copies"] = float((pred[train_copy] == y[train_copy]).mean())
        m["train_copies"] = block
    return m
