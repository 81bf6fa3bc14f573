"""What the served answers are worth: referral, calibration, prediction sets and out-of-distribution detection.

Pure functions over what `serving_default` returned (calibrated probabilities, `refer`,
`prediction_set`, `in_distribution`, `ood_score`); components/evaluate/executor.py runs the model.
The external smears (another lab; none an ALL-stage image) are split by a hash of each file's
name: one half may be used to choose (methods, thresholds), the other only to report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from components import domain
from components.train import calibration

RISK_COVERAGE_POINTS = 21


def external_halves(directory: str | Path) -> dict[str, list[Path]]:
    """{"choose": [...], "report": [...]}: the image files of `directory`, halved by sha256(file name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"external smears folder {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in domain.IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(
            f"external smears folder {directory} holds no images ({', '.join(sorted(domain.IMAGE_SUFFIXES))})"
        )
    halves: dict[str, list[Path]] = {"choose": [], "report": []}
    for path in files:
        parity = int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % 2
        halves["report" if parity else "choose"].append(path)
    return halves


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T * log p) == softmax(logits)."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-45, 1.0))
    return calibration.softmax(logp * temperature)


def referral_summary(
    probabilities: np.ndarray,
    labels: np.ndarray,
    refer: np.ndarray,
    in_distribution: np.ndarray,
    prediction_set: np.ndarray,
    coverage_target: float | None,
) -> dict:
    """Test referral, accuracy of what is accepted, the sets' coverage and size, and the risk-coverage curve."""
    labels = np.asarray(labels)
    refer = np.asarray(refer, dtype=bool)
    sets = np.asarray(prediction_set, dtype=bool)
    correct = np.asarray(probabilities).argmax(axis=1) == labels
    accepted = ~refer
    sizes = sets.sum(axis=1)
    return {
        "test_referral_rate": float(refer.mean()),
        "ood_referral_rate": float((~np.asarray(in_distribution, dtype=bool)).mean()),
        "set_referral_rate": float((sizes != 1).mean()),
        "accepted": int(accepted.sum()),
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "referred_accuracy": float(correct[refer].mean()) if refer.any() else None,
        "coverage": float(sets[np.arange(len(labels)), labels].mean()),
        "coverage_target": coverage_target,
        "mean_set_size": float(sizes.mean()),
        "set_size_counts": {str(k): int((sizes == k).sum()) for k in range(domain.NUM_CLASSES + 1)},
        "risk_coverage": risk_coverage(probabilities, labels, refer),
    }


def risk_coverage(
    probabilities: np.ndarray, labels: np.ndarray, refer: np.ndarray, points: int = RISK_COVERAGE_POINTS
) -> list[dict]:
    """Accuracy of the accepted images against the share referred, referring the least certain first.

    Images the model refers come first, then the lowest top probability; the operating point is
    where the share referred equals `refer`'s.
    """
    confidence = np.asarray(probabilities).max(axis=1)
    order = np.lexsort((confidence, ~np.asarray(refer, dtype=bool)))  # referred first, then least confident
    correct = (np.asarray(probabilities).argmax(axis=1) == np.asarray(labels))[order]
    n = len(correct)
    out = []
    for share in np.linspace(0.0, 0.3, points):
        k = int(round(share * n))
        kept = correct[k:]
        out.append({"referred": k / n if n else 0.0, "accuracy": float(kept.mean()) if len(kept) else None})
    return out


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of separating out-of-distribution (positive, larger score) from in-distribution images."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def detection_scores(
    probabilities: np.ndarray, ood_score: np.ndarray, logits: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Each method's score on the same images: larger means "less like training".

    - the served graph's `ood_score` (Mahalanobis on mid-level features: the method in use);
    - max-softmax: 1 - the top calibrated probability (Hendrycks and Gimpel 2017);
    - energy: -logsumexp(logits) (Liu et al. 2020); the logits come from the Keras copy of the model,
      since the probabilities lose the per-image constant that energy is made of.
    """
    scores = {
        "mahalanobis_mid_level": np.asarray(ood_score, dtype=np.float64),
        "max_softmax": calibration.max_softmax_score(probabilities),
    }
    if logits is not None:
        scores["energy"] = calibration.energy_score(logits)
    return scores
