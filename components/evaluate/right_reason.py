"""The figures evaluation adds for "right for the right reason": missed malignancy everywhere, magnification,
the leukocyte probes, and Benign recall with its interval. The executor calls these with its `run` function
(encoded images -> `serving_default` outputs) and the outputs it already has."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from components.evaluate import malignancy

Run = Callable[[list[bytes]], dict[str, np.ndarray]]


def answered_figures(out: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy, referral, accuracy of the answered images and missed malignancy of one set of outputs."""
    labels = np.asarray(labels)
    predicted = out["probabilities"].argmax(axis=1)
    refer = out["refer"].astype(bool) if "refer" in out else np.zeros(len(labels), bool)
    answered = ~refer
    return {
        "accuracy": float((predicted == labels).mean()),
        "referred": float(refer.mean()),
        "answered_accuracy": float((predicted == labels)[answered].mean()) if answered.any() else None,
        "missed_malignancy": malignancy.missed_malignancy(labels, predicted, refer),
    }


def magnification(run: Run, images: Sequence[np.ndarray], labels: np.ndarray) -> dict:
    """answered_figures at each magnification of components/evaluate/robustness.py (x0.6-x2), with its scale."""
    from components.evaluate.robustness import MAGNIFICATIONS, perturbed_sets

    return {
        name: {"scale": MAGNIFICATIONS[name][1], **answered_figures(run(encoded), labels)}
        for name, encoded in perturbed_sets(images, tuple(MAGNIFICATIONS))
    }


def worst_missed(perturbed: dict[str, dict], names: Sequence[str]) -> tuple[str | None, float | None]:
    """The perturbation (of `names`) with the largest missed-malignancy share, and that share."""
    shares = {n: perturbed[n].get("missed_share") for n in names if n in perturbed}
    shares = {n: v for n, v in shares.items() if v is not None}
    if not shares:
        return None, None
    name = max(shares, key=shares.get)
    return name, shares[name]


def out_of_fold_benign_recall(cv_results: str | Path, recipe: str | None = None) -> dict | None:
    """Benign recall out of fold from a cross-validation's results (a recipe_cv JSON), with its Wilson interval.

    The recipe is the quick profile's (`quick_profile` in the file: "<size>px/<views>v") unless named; the
    counts come from its confusion matrix (rows true, Benign first). None when the file is missing.
    """
    import json

    from components import domain

    path = Path(cv_results)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    recipes = data.get("recipes") or {}
    quick = data.get("quick_profile") or {}
    name = recipe or f"{quick.get('image_size')}px/{quick.get('views')}v"
    if name not in recipes:
        raise ValueError(f"{path.name} has no recipe {name!r}; it has {', '.join(recipes) or 'none'}")
    row = recipes[name]["confusion_matrix"][domain.class_index("Benign")]
    correct, images = int(row[domain.class_index("Benign")]), int(sum(row))
    return {
        "source": path.name,
        "recipe": name,
        "recall": correct / images,
        "ci": malignancy.wilson_interval(correct, images),
        "correct": correct,
        "images": images,
        "when": data.get("when"),
    }
