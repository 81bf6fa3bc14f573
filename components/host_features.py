"""Per-image colour, brightness and stain features, host side (NumPy/scikit-image).

The definition that counts is the graph's (components/image_features.py): the served
model returns the features, and the drift reference runs the same graph. This twin
serves validation (`mean_brightness`) and host-side analysis; a test holds it to the
graph within components.image_features.FEATURE_TOLERANCE.

Why these features, for Wright-Giemsa peripheral smears:
- brightness (L* mean and spread, CIELAB): the lamp, exposure and camera gain.
  On this data the class is almost given away by global colour and brightness,
  so a lamp change is the most likely silent failure.
- contrast (RMS of grey levels): focus and exposure range.
- saturation and hue (HSV; hue as a circular mean weighted by saturation): stain
  strength and the blue/purple balance that staining time and buffer pH shift.
- per-channel RGB means: the white balance of the camera.
- stain statistics: colour deconvolution with scikit-image's `rgb2hed` on the
  stained foreground (Otsu on saturation), kept apart from the background
  (plasma and glass). `rgb2hed` uses Ruifrok and Johnston's H&E(+DAB) vectors;
  Wright-Giemsa is a Romanowsky stain (methylene blue/azure B and eosin Y), so the
  "H" channel tracks the basophilic (azure, nuclear) component and "E" the
  eosinophilic one only approximately. The values are comparable between images
  of one lab and good for detecting a change; they are not stain concentrations.

Features are computed on the image downscaled to at most FEATURE_SIDE pixels a
side: the statistics are global, and this keeps the request log cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# One list of names and groups, shared with the graph's definition (components/image_features.py).
from components.image_features import (  # noqa: E402,F401 - re-exported for the drift monitor
    BRIGHTNESS_FEATURES,
    FEATURE_NAMES,
    FEATURE_SIDE,
    STAIN_FEATURES,
)


def mean_brightness(rgb: np.ndarray) -> float:
    """Mean grey level (0-255, ITU-R BT.601 luma) of a uint8 RGB image; used by validation."""
    rgb = rgb.astype(np.float32)
    return float((0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).mean())


def _downscale(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    step = max(1, int(np.ceil(max(height, width) / FEATURE_SIDE)))
    if step == 1:
        return rgb
    from PIL import Image

    img = Image.fromarray(rgb)
    return np.asarray(img.resize((max(1, width // step), max(1, height // step)), Image.BILINEAR))


def image_features(rgb: np.ndarray) -> dict[str, float]:
    """All FEATURE_NAMES for one uint8 RGB image (H, W, 3)."""
    from skimage.color import rgb2hed, rgb2hsv, rgb2lab
    from skimage.filters import threshold_otsu

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    small = _downscale(rgb)
    unit = small.astype(np.float64) / 255.0

    lightness = rgb2lab(unit)[..., 0]
    hsv = rgb2hsv(unit)
    saturation = hsv[..., 1]
    hue_angle = hsv[..., 0] * 2 * np.pi
    weight = saturation + 1e-9
    hue_mean = np.arctan2((np.sin(hue_angle) * weight).sum(), (np.cos(hue_angle) * weight).sum())
    grey = unit @ np.array([0.299, 0.587, 0.114])

    # Stained foreground: the more saturated pixels (cells), Otsu-separated from plasma/glass.
    try:
        threshold = threshold_otsu(saturation)
    except ValueError:  # a constant image has no threshold
        threshold = float(saturation.max()) + 1.0
    foreground = saturation > threshold
    if foreground.sum() < 16:
        foreground = np.zeros_like(saturation, dtype=bool)
    background = ~foreground

    hed = rgb2hed(unit)
    h_values = hed[..., 0][foreground] if foreground.any() else np.zeros(1)
    e_values = hed[..., 1][foreground] if foreground.any() else np.zeros(1)

    return {
        "brightness_mean": float(lightness.mean()),
        "brightness_std": float(lightness.std()),
        "contrast": float(grey.std()),
        "saturation_mean": float(saturation.mean()),
        "hue_mean": float((hue_mean % (2 * np.pi)) / (2 * np.pi)),
        "red_mean": float(unit[..., 0].mean()),
        "green_mean": float(unit[..., 1].mean()),
        "blue_mean": float(unit[..., 2].mean()),
        "stain_h_mean": float(h_values.mean()),
        "stain_h_std": float(h_values.std()),
        "stain_e_mean": float(e_values.mean()),
        "stain_e_std": float(e_values.std()),
        "foreground_fraction": float(foreground.mean()),
        "background_brightness": float(lightness[background].mean()) if background.any() else float(lightness.mean()),
    }


def file_features(path: str | Path) -> dict[str, float]:
    """Features of an image file, decoded by the domain module."""
    from components import domain

    return image_features(domain.load_rgb(path))
