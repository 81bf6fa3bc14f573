"""Missed malignancy: the error that sends a leukemia patient home.

A malignant image (truth Early, Pre or Pro) is *missed* when the model answers Benign and does not refer
it: nobody looks again. Referral is the served graph's `refer` output (components/train/export.py); a
model exported without it refers nothing. *Malignancy sensitivity* is the complement: the share of
malignant images answered malignant (any stage) or referred. Both come with a Wilson score interval,
which stays inside [0, 1] and is honest at 0 events (a bootstrap of 0 misses is the point 0).
"""

from __future__ import annotations

import math

import numpy as np

from components import domain

BENIGN = domain.class_index("Benign")
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> list[float] | None:
    """The Wilson score interval [low, high] of a proportion; None for no trials."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def missed_malignancy(y_true: np.ndarray, y_pred: np.ndarray, refer: np.ndarray | None = None) -> dict:
    """Count and share of malignant images answered Benign and not referred; malignancy sensitivity; both with CIs."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    refer = np.zeros(y_true.shape, bool) if refer is None else np.asarray(refer, bool)
    malignant = y_true != BENIGN
    missed = malignant & (y_pred == BENIGN) & ~refer
    caught = malignant & ((y_pred != BENIGN) | refer)
    n, k = int(malignant.sum()), int(missed.sum())
    return {
        "malignant_images": n,
        "missed": k,
        "missed_share": k / n if n else None,
        "missed_share_ci": wilson_interval(k, n),
        "sensitivity": int(caught.sum()) / n if n else None,
        "sensitivity_ci": wilson_interval(int(caught.sum()), n),
        "referred_malignant": int((malignant & refer).sum()),
    }


def benign_recall(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Benign recall with its Wilson interval (shown per run; judged out of fold, not on one test split)."""
    benign = np.asarray(y_true) == BENIGN
    k, n = int((benign & (np.asarray(y_pred) == BENIGN)).sum()), int(benign.sum())
    return {"recall": k / n if n else None, "ci": wilson_interval(k, n), "correct": k, "images": n}
