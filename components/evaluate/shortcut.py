"""The shortcut baseline: a gradient-boosted tree on global colour statistics alone.

If it matches the deep models, their accuracy says little beyond "the stain colour gives the class away".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components import atomic_files, settings
from components.colour_statistics import HSV_BINS, colour_features

SHORTCUT_SIZE = 96  # global colour statistics hardly depend on resolution; keeps the baseline cheap


def fit_score(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = settings.SEED,
    perturbed: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """Fit HistGradientBoostingClassifier on train features, score on test: accuracy, macro-F1, Benign recall.

    `perturbed` maps a perturbation's name to (features, labels) of the perturbed test images: the
    baseline's accuracy there is reported beside the models' (components/evaluate/robustness.py).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from components.evaluate.metrics import classification_metrics

    # One OpenMP thread: on a shared 2-core machine the default thread pool is 16x slower (measured 16 s vs 1 s).
    with threadpool_limits(1):
        model = HistGradientBoostingClassifier(random_state=seed).fit(train_x, train_y)
        pred = model.predict(test_x)
        robustness = {name: float((model.predict(x) == y).mean()) for name, (x, y) in (perturbed or {}).items()}
    m = classification_metrics(test_y, pred)
    result = {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "benign_recall": m["per_class"]["Benign"]["recall"],
        "features": "RGB mean/std per channel + 16-bin HSV histograms",
        "model": "HistGradientBoostingClassifier",
        "train_images": int(len(train_y)),
        "test_images": int(len(test_y)),
    }
    if robustness:
        result["robustness"] = robustness
    return result


def encoded_features(images: list[bytes], size: int = SHORTCUT_SIZE) -> np.ndarray:
    """Colour features of encoded images, decoded and resized with Pillow (global colour hardly depends on how)."""
    import io

    from PIL import Image

    def small(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))

    return colour_features(np.stack([small(b) for b in images]))


def split_features(split_dir: str | Path, split: str, size: int = SHORTCUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Colour features and labels of one split's shard pixels."""
    from components.train import input as train_input

    feats, labels = [], []
    for x, y in train_input.dataset(split_dir, split, size, 128, cache=False):
        feats.append(colour_features(x.numpy()))
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _cache_key(split_dir: Path, seed: int, perturbations: tuple[str, ...] = ()) -> str:
    import hashlib

    digest = hashlib.sha256(f"{seed}:{SHORTCUT_SIZE}:{HSV_BINS}:{'|'.join(perturbations)}".encode())
    for path in sorted(split_dir.glob("*/*.tfrecord")):
        stat = path.stat()
        digest.update(f"{path.parent.name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def shortcut_on_split(
    split_dir: str | Path,
    seed: int = settings.SEED,
    use_cache: bool = True,
    perturbed: dict[str, list[bytes]] | None = None,
    labels: np.ndarray | None = None,
) -> dict:
    """The shortcut baseline trained on split_dir/train and tested on split_dir/test (and its perturbed copies).

    It does not depend on the model, so the three evaluations of one split share one result
    (cached under $LEUKOFLOW_HOME/cache/shortcut/, keyed by the shard files, the seed and the perturbations).
    `perturbed` holds each perturbation's encoded test images, in the order of `labels`.
    """
    import json

    from components.home import home

    split_dir = Path(split_dir)
    names = tuple(perturbed or ())
    cache = home() / "cache" / "shortcut" / f"{_cache_key(split_dir, seed, names)}.json"
    if not use_cache:
        return _shortcut(split_dir, seed, perturbed, labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    # The evaluations of one run start together: the first computes, the others wait and read its result.
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.is_file():
            return {**json.loads(cache.read_text()), "cached": True}
        result = _shortcut(split_dir, seed, perturbed, labels)
        atomic_files.write_text(cache, json.dumps(result))
    return result


def _shortcut(split_dir: Path, seed: int, perturbed: dict[str, list[bytes]] | None, labels: np.ndarray | None) -> dict:
    """Fit on train, score on test and on each perturbed copy of test."""
    if perturbed and labels is None:
        raise ValueError("perturbed test images need their labels")
    sets = {name: (encoded_features(images), np.asarray(labels)) for name, images in (perturbed or {}).items()}
    return fit_score(*split_features(split_dir, "train"), *split_features(split_dir, "test"), seed=seed, perturbed=sets)
