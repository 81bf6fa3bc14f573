"""Helpers for the monitoring tests: small smear-like images (tinted background, dark nuclei, a lamp level) and their feature frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from components.host_features import image_features

# Background tint per class (RGB) and nucleus radius (fraction of the side): classes differ in colour, as on the real data.
TINT = {"Benign": (222, 180, 200), "Early": (200, 170, 215), "Pre": (180, 170, 220), "Pro": (225, 215, 200)}
RADIUS = {"Benign": 0.12, "Early": 0.18, "Pre": 0.24, "Pro": 0.30}


def smear(label: str, rng: np.random.Generator, size: int = 32, lamp: float = 1.0) -> np.ndarray:
    """One uint8 RGB image; `lamp` scales all intensities (a brighter or dimmer microscope lamp)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.ones((size, size, 3), np.float32) * (np.array(TINT[label], np.float32) + rng.normal(0, 5, 3))
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = RADIUS[label] * size * rng.uniform(0.8, 1.2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[mask] = img[mask] * 0.4 + np.array([70, 40, 110], np.float32) * 0.6
    img += rng.normal(0, 4, img.shape)
    return np.clip(img * lamp, 0, 255).astype(np.uint8)


def feature_frame(labels: list[str], seed: int, lamp: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"class": label, **image_features(smear(label, rng, lamp=lamp))} for label in labels]
    return pd.DataFrame(rows)


def balanced(n: int) -> list[str]:
    return [list(TINT)[i % 4] for i in range(n)]


def save_images(directory, labels: list[str], seed: int, lamp: float = 1.0, class_folders: bool = True) -> None:
    rng = np.random.default_rng(seed)
    for i, label in enumerate(labels):
        folder = directory / label if class_folders else directory
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smear(label, rng, lamp=lamp)).save(folder / f"img{i:04d}.png")
