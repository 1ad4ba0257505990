"""The one definition of the headline metrics (scikit-learn), below training and evaluation: the trainer's
validation row in log.jsonl and evaluation's metrics.json compute accuracy, macro-F1 and log-loss here, so the
same predictions give the same numbers in both.

Macro-F1 averages over the classes present in the true labels: a model class the data lacks has no recall to speak
of (its wrong predictions still count against the precision of the others). scikit-learn is imported inside the
functions, so importing this module stays cheap.
"""

from __future__ import annotations

import warnings

import numpy as np


def present_classes(y: np.ndarray) -> list[int]:
    return sorted(set(np.asarray(y).tolist()))


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=present_classes(y), average="macro", zero_division=0))


def log_loss(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes; rows are renormalised (float32 sums may be 1 +- 1e-7)."""
    from sklearn.metrics import log_loss as sk_log_loss

    p = np.asarray(prob, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the renormalisation it would do itself
        return float(sk_log_loss(y, p / p.sum(1, keepdims=True), labels=list(range(p.shape[1]))))


def validation_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """loss, acc and macro_f1 of probabilities N x C against integer labels N (the trainer logs them as val_*)."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(prob).argmax(1)
    return {"loss": log_loss(y, prob), "acc": float((pred == y).mean()), "macro_f1": macro_f1(y, pred)}
