"""Classification metrics of a set of predictions: point estimates and bootstrap intervals.

Apart from the executor so that the shortcut baseline scores itself the same way without importing it.
"""

from __future__ import annotations

import numpy as np

from components import domain, settings

BOOTSTRAP_RESAMPLES = 1000


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, per-class P/R/F1/support, macro and weighted F1, confusion matrix (rows true, columns predicted)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = np.arange(domain.NUM_CLASSES)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(domain.CLASS_NAMES)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(domain.CLASS_NAMES),
    }


def _macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Macro-F1 from a confusion matrix, as sklearn computes it with zero_division=0."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (tp + fp) + (tp + fn)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = settings.SEED,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (test images resampled with replacement) for accuracy and macro-F1."""
    rng = np.random.default_rng(seed)
    k = domain.NUM_CLASSES
    n = len(y_true)
    cells = np.asarray(y_true) * k + np.asarray(y_pred)
    acc, f1 = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        cm = np.bincount(cells[rng.integers(0, n, n)], minlength=k * k).reshape(k, k)
        acc[i] = np.trace(cm) / n
        f1[i] = _macro_f1_from_confusion(cm)
    tail = (1 - level) / 2 * 100
    return {
        "accuracy_ci": [float(np.percentile(acc, tail)), float(np.percentile(acc, 100 - tail))],
        "macro_f1_ci": [float(np.percentile(f1, tail)), float(np.percentile(f1, 100 - tail))],
    }
