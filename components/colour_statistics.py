"""Global colour statistics of smear images: what the shortcut baseline classifies on, and what the pseudo-slides
cluster (components/evaluate/shortcut.py, components/split/slides.py)."""

from __future__ import annotations

import numpy as np

HSV_BINS = 16


def colour_features(rgb: np.ndarray) -> np.ndarray:
    """Per image: RGB mean and std per channel, and a 16-bin histogram of each HSV channel (54 numbers).

    `rgb` is uint8 [N, H, W, 3] or float [N, H, W, 3] in [0, 1].
    """
    x = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    if x.ndim == 3:
        x = x[None]
    flat = x.reshape(len(x), -1, 3)
    stats = np.concatenate([flat.mean(axis=1), flat.std(axis=1)], axis=1)
    return np.concatenate([stats, hsv_histograms(flat).astype(np.float32)], axis=1)


def hsv_histograms(flat: np.ndarray) -> np.ndarray:
    """float32 [N, P, 3] in [0, 1] -> [N, 3 * HSV_BINS]: the fraction of each image's pixels in each H, S, V bin.

    HSV by scikit-image's `rgb2hsv` arithmetic in float32 (a test checks it bin for bin), without its masked
    assignments: 7x faster, and those were most of the shortcut baseline's time in an evaluation.
    """
    r, g, b = flat[..., 0], flat[..., 1], flat[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    grey = delta == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(grey, np.float32(0), delta / v)
        h = np.where(b == v, 4.0 + (r - g) / delta, np.where(g == v, 2.0 + (b - r) / delta, (g - b) / delta))
    h = (h.astype(np.float32) / np.float32(6.0)) % np.float32(1.0)
    h[grey] = 0
    image_offset = (np.arange(len(flat), dtype=np.int64) * HSV_BINS)[:, None]
    hists = [
        np.bincount(
            (np.minimum((c * HSV_BINS).astype(np.int64), HSV_BINS - 1) + image_offset).ravel(),
            minlength=len(flat) * HSV_BINS,
        ).reshape(len(flat), HSV_BINS)
        for c in (h, s, v)
    ]
    return np.concatenate(hists, axis=1) / flat.shape[1]
