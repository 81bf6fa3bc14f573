"""What a pathologist should label first: kept referrals, and training images whose label looks wrong.

Referred served images (kept by `leukoflow serve --keep_referred_images`) are ranked by how far out of
distribution they are and by how ambiguous the answer was: the mean of the two percentile ranks of
`ood_score` and of the prediction-set size (an empty set, no plausible class, counts as the widest).
Images already in the case store are left out.

Training images are ranked by confident learning (Northcutt et al., "Confident Learning", 2021) on the
out-of-fold logits `experiments/recipe_cv.py --logits DIR` saves (`logits` [views, n, C] or [n, C],
`labels` [n], `paths` [n]). For each recipe: the self-confidence of an image is the out-of-fold
probability of its given label; the threshold t_j of class j is the mean self-confidence of the images
labelled j; an image is a label issue when its given label's probability is under that class's threshold
and another class k reaches t_k (it lands off the diagonal of the confident joint). Over several recipes
(several logits files), images are ranked by how many recipes flag them, then by mean self-confidence.
Written here in a few lines rather than with cleanlab, whose AGPL-3.0 licence the project does not take on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from components import domain


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: self-confidence, whether confident learning flags it, and the class it is confidently read as."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, classes = probabilities.shape
    if labels.shape != (n,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
        raise ValueError(f"labels must be {n} class indices below {classes}")
    self_confidence = probabilities[np.arange(n), labels]
    thresholds = np.array([self_confidence[labels == j].mean() if (labels == j).any() else 1.0 for j in range(classes)])
    confident = probabilities >= thresholds[None, :]
    confident[np.arange(n), labels] = False
    # The off-diagonal class the image is most confidently read as (highest probability among those reaching t_k).
    read_as = np.where(confident.any(axis=1), np.where(confident, probabilities, -1.0).argmax(axis=1), -1)
    flagged = (self_confidence < thresholds[labels]) & (read_as >= 0)
    return {"self_confidence": self_confidence, "flagged": flagged, "read_as": read_as, "thresholds": thresholds}


def load_oof(path: Path, views: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [n, C], labels [n], paths [n]) from a recipe_cv logits file; `views` picks the view count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"out-of-fold logits {path} not found; `experiments/recipe_cv.py --logits DIR` writes them"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = {"logits", "labels", "paths"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}; expected recipe_cv's out-of-fold logits")
        logits, labels, paths = data["logits"], data["labels"], data["paths"].astype(str)
        counts = data["view_counts"].tolist() if "view_counts" in data.files else None
    if logits.ndim == 3:
        if views is None:
            index = logits.shape[0] - 1  # the most views: what the served model does
        elif counts and views in counts:
            index = counts.index(views)
        else:
            raise ValueError(f"{path} holds view counts {counts}, not {views}")
        logits = logits[index]
    if logits.ndim != 2 or logits.shape != (len(labels), domain.NUM_CLASSES) or len(paths) != len(labels):
        raise ValueError(f"{path}: logits {logits.shape}, labels {labels.shape}, paths {paths.shape} do not match")
    return softmax(logits.astype(np.float64)), labels.astype(np.int64), paths


def suspect_labels(files: list[Path], views: int | None = None, limit: int = 50) -> list[dict]:
    """Training images whose label looks wrong, over every recipe's logits file, worst first."""
    per_path: dict[str, dict] = {}
    for file in files:
        probabilities, labels, paths = load_oof(file, views)
        found = label_issues(probabilities, labels)
        for i, path in enumerate(paths):
            item = per_path.setdefault(
                path,
                {
                    "path": path,
                    "label": domain.CLASS_NAMES[labels[i]],
                    "recipes": 0,
                    "flagged": 0,
                    "misread": 0,
                    "self_confidence": [],
                    "read_as": Counter(),
                },
            )
            item["recipes"] += 1
            item["self_confidence"].append(float(found["self_confidence"][i]))
            predicted = int(probabilities[i].argmax())
            if predicted != labels[i]:
                item["misread"] += 1
                item["read_as"][domain.CLASS_NAMES[predicted]] += 1
            if found["flagged"][i]:
                item["flagged"] += 1
                if predicted == labels[i]:  # flagged without being misread: count the confident class
                    item["read_as"][domain.CLASS_NAMES[found["read_as"][i]]] += 1
    ranked = []
    for item in per_path.values():
        if not item["flagged"]:
            continue
        ranked.append(
            {
                "path": item["path"],
                "label": item["label"],
                "read_as": item["read_as"].most_common(1)[0][0] if item["read_as"] else None,
                "flagged_by": item["flagged"],
                "misread_by": item["misread"],
                "recipes": item["recipes"],
                "self_confidence": round(float(np.mean(item["self_confidence"])), 4),
            }
        )
    ranked.sort(key=lambda r: (-r["flagged_by"], -r["misread_by"], r["self_confidence"], r["path"]))
    return ranked[:limit]


def _percentile_ranks(values: list[float]) -> np.ndarray:
    """Each value's rank in [0, 1] (ties share their mean rank); 1 is the largest."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) <= 1:
        return np.ones(len(array))
    order = array.argsort(kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(len(array))
    for value in np.unique(array):  # ties: their mean rank
        same = array == value
        ranks[same] = ranks[same].mean()
    return ranks / (len(array) - 1)


def referred_queue(kept_dir: Path, labelled_sha256: set[str], limit: int = 50) -> list[dict]:
    """Kept referred images not yet a case, most out-of-distribution and most ambiguous first."""
    from components.cases.referred import ReferredImages

    if not Path(kept_dir).is_dir():
        return []
    entries = [e for e in ReferredImages(kept_dir).entries() if e["sha256"] not in labelled_sha256]
    unique: dict[str, dict] = {}
    for entry in sorted(entries, key=lambda e: e.get("kept_at") or ""):  # one row per image, its latest request
        unique[entry["sha256"]] = entry
    entries = list(unique.values())
    if not entries:
        return []
    ood = [float(e["ood_score"]) if e.get("ood_score") is not None else 0.0 for e in entries]
    sets = [e.get("prediction_set") for e in entries]
    ambiguity = [len(s) if s else domain.NUM_CLASSES for s in sets]  # an empty set: no class fits at all
    priority = (_percentile_ranks(ood) + _percentile_ranks(ambiguity)) / 2
    rows = [
        {
            "request_id": e["request_id"],
            "sha256": e["sha256"],
            "path": str(e["path"]),
            "kept_at": e.get("kept_at"),
            "model_version": e.get("version"),
            "predicted_label": e.get("predicted_label"),
            "ood_score": e.get("ood_score"),
            "prediction_set": s if s is not None else None,
            "priority": round(float(p), 4),
        }
        for e, s, p in zip(entries, sets, priority)
    ]
    rows.sort(key=lambda r: (-r["priority"], -(r["ood_score"] or 0.0), r["request_id"]))
    return rows[:limit]


def review_queue(
    kept_dir: Path, cases_dir: Path, oof_logits: list[Path], views: int | None = None, limit: int = 50
) -> dict:
    """Both lists, and the count of referred images waiting (the drift alert quotes it)."""
    from components.cases.store import read_ledger

    labelled = set(read_ledger(cases_dir)["sha256"])
    referred = referred_queue(kept_dir, labelled, limit=10**9)
    return {
        "referred_waiting": len(referred),
        "referred": referred[:limit],
        "suspect_labels": suspect_labels(oof_logits, views, limit) if oof_logits else [],
        "oof_logits": [str(p) for p in oof_logits],
        "kept_dir": str(kept_dir),
    }
