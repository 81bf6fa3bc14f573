"""What a trained model needs to know when it does not know: fitted on train and validation, run in the graph.

- Temperature scaling (Guo et al. 2017) on the validation logits: one scalar, so accuracy is unchanged;
  a weak prior around T = 1 keeps it finite when validation holds no error, and T = 1 stands when the
  fitted value would raise the validation ECE.
- An out-of-distribution score: the class-conditional Mahalanobis distance (Lee et al. 2018) of the
  pooled penultimate features to the nearest class mean, under one shared covariance shrunk by
  Ledoit-Wolf (1280 or 2048 dimensions from ~2,000 images need shrinkage to be invertible). Fitted
  on the training features, augmented copies included, so another lab's lamp is not "unlike training".
  The threshold is the validation quantile that refers `ood_referral_rate` of in-distribution images.
- Split-conformal prediction sets (Vovk; Angelopoulos and Bates 2021) on the calibrated
  probabilities: score 1 - p(true class), quantile with the finite-sample correction on validation.
  It is three lines of numpy; a library such as MAPIE would need the SavedModel wrapped as a
  scikit-learn estimator to compute the same quantile.

The numbers are stored in the model's metadata and as constants in the exported graph
(components/train/export.py), so every signature returns the same calibrated answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """The fitted numbers the exported graph needs."""

    temperature: float
    class_means: np.ndarray  # [classes, D]
    whitening: np.ndarray  # [D, D]: ||(f - mean_c) @ whitening||^2 is the Mahalanobis distance
    ood_threshold: float  # a score above this is out of distribution
    conformal_quantile: float  # class c is in the set when p_c >= 1 - quantile
    ood_referral_rate: float
    coverage: float
    fitted_on: dict


TEMPERATURE_PRIOR_SD = 1.0  # log-normal prior on T around 1: sd of log T (a factor of e either way)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, prior_sd: float = TEMPERATURE_PRIOR_SD) -> float:
    """The temperature minimising the validation negative log-likelihood, with a weak log-normal prior around 1.

    Without the prior, a validation split the model gets entirely right has no finite optimum: the likelihood
    keeps rising as T falls, so the fit ran to its bound (T = 0.05, twenty-fold sharpening) and the conformal
    quantile to 0 (every image short of p = 1 referred). The prior adds (log T)^2 / (2 sd^2 n) to the mean NLL:
    negligible whenever validation holds errors to fit on, decisive only when it holds none.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    labels = np.asarray(labels, dtype=np.int64)
    n = max(len(labels), 1)

    def objective(log_t: float) -> float:
        nll = -log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean()
        return float(nll + log_t * log_t / (2.0 * prior_sd * prior_sd * n))

    result = minimize_scalar(objective, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import softmax as _softmax

    return _softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class means [C, D], whitening [D, D]) with a Ledoit-Wolf shrunk covariance shared by the classes."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    if not present:
        raise ValueError("no training features to fit the out-of-distribution score on")
    means = np.stack(
        [features[labels == c].mean(axis=0) if c in present else features.mean(axis=0) for c in range(num_classes)]
    )
    centred = features - means[labels]
    scale = centred.std(axis=0) + 1e-6  # standardise first: features of random-init bases span decades
    precision = LedoitWolf(assume_centered=True).fit(centred / scale).precision_
    precision = (precision + precision.T) / 2
    root = np.linalg.cholesky(precision + 1e-9 * np.eye(len(precision)))  # precision = root @ root.T
    return means.astype(np.float32), (root / scale[:, None]).astype(np.float32)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Distance to the nearest class mean (what the graph computes), per row."""
    features = np.asarray(features, dtype=np.float64)
    projected = features @ whitening
    centres = np.asarray(means, dtype=np.float64) @ whitening
    dists = ((projected[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return dists.min(axis=1)


def conformal_quantile(probabilities: np.ndarray, labels: np.ndarray, coverage: float) -> float:
    """Split-conformal quantile of 1 - p(true) with the (n + 1) finite-sample correction."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        raise ValueError("no validation images to fit the conformal quantile on")
    scores = 1.0 - probabilities[np.arange(n), labels]
    level = min(1.0, math.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


def prediction_sets(probabilities: np.ndarray, quantile: float) -> np.ndarray:
    """[N, C] bool: the classes whose calibrated probability is at least 1 - quantile."""
    return np.asarray(probabilities) >= 1.0 - quantile


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence over equal-width bins (Guo et al. 2017)."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per-bin mean confidence, accuracy and count: the reliability diagram's data."""
    confidence = np.asarray(probabilities).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        out.append(
            {
                "low": float(low),
                "high": float(high),
                "count": int(inside.sum()),
                "confidence": float(confidence[inside].mean()) if inside.any() else None,
                "accuracy": float(correct[inside].mean()) if inside.any() else None,
            }
        )
    return out


def fit_calibration(
    train_ood_features: np.ndarray,
    train_labels: np.ndarray,
    val_head_features: np.ndarray,
    val_ood_features: np.ndarray,
    val_labels: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray,
    *,
    num_classes: int,
    ood_referral_rate: float,
    coverage: float,
) -> Calibration:
    """Fit temperature (head features), the Mahalanobis score and its threshold (mid-level features), the conformal quantile."""
    val_logits = np.asarray(val_head_features, dtype=np.float64) @ kernel + bias
    fitted_temperature = fit_temperature(val_logits, val_labels)
    ece_before = expected_calibration_error(softmax(val_logits), val_labels)
    # The NLL optimum can worsen calibration: a few hugely confident wrong logits (the random-feature quick
    # ResNet50) dominate the likelihood, and T = 1.6 took its validation ECE from 0.044 to 0.113. Scaling is
    # kept only when it lowers the validation ECE; otherwise the model answers with its own probabilities.
    temperature = fitted_temperature
    if expected_calibration_error(softmax(val_logits, fitted_temperature), val_labels) > ece_before:
        temperature = 1.0
    means, whitening = fit_mahalanobis(train_ood_features, train_labels, num_classes)
    val_scores = mahalanobis_score(val_ood_features, means, whitening)
    threshold = float(np.quantile(val_scores, 1.0 - ood_referral_rate))
    calibrated = softmax(val_logits, temperature)
    quantile = conformal_quantile(calibrated, val_labels, coverage)
    return Calibration(
        temperature=temperature,
        class_means=means,
        whitening=whitening,
        ood_threshold=threshold,
        conformal_quantile=quantile,
        ood_referral_rate=ood_referral_rate,
        coverage=coverage,
        fitted_on={
            "train_features": int(len(train_labels)),
            "val_images": int(len(val_labels)),
            "val_ood_referred": float(np.mean(val_scores > threshold)),
            "val_ece_before": ece_before,
            "val_ece_after": expected_calibration_error(calibrated, val_labels),
            "fitted_temperature": fitted_temperature,
            "temperature_kept": temperature == fitted_temperature,
        },
    )


def energy_score(logits: np.ndarray) -> np.ndarray:
    """The free energy -logsumexp(logits): larger means less like training (Liu et al. 2020)."""
    from scipy.special import logsumexp

    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


def max_softmax_score(probabilities: np.ndarray) -> np.ndarray:
    """1 - max probability: larger means less confident (Hendrycks and Gimpel 2017)."""
    return 1.0 - np.asarray(probabilities).max(axis=1)
