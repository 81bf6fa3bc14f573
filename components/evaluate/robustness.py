"""Fixed stain and lamp perturbations of the test pixels: how much accuracy survives a change of lab."""

from __future__ import annotations

from typing import Callable

import numpy as np

# Deterministic, so every model and every run sees the very same perturbed images.
PERTURBATIONS: tuple[str, ...] = (
    "brightness+15%", "brightness-15%", "contrast+15%", "contrast-15%",
    "hue+0.05", "hue-0.05", "saturation+20%", "saturation-20%", "grayscale",
)


def perturb(images: np.ndarray, name: str) -> np.ndarray:
    """Apply one named perturbation to float32 [N, H, W, 3] in [0, 1]; the result stays in [0, 1]."""
    import tensorflow as tf

    x = tf.convert_to_tensor(images, tf.float32)
    if name.startswith("brightness"):
        out = x * (1.15 if "+" in name else 0.85)
    elif name.startswith("contrast"):
        out = tf.image.adjust_contrast(x, 1.15 if "+" in name else 0.85)
    elif name.startswith("hue"):
        out = tf.image.adjust_hue(x, 0.05 if "+" in name else -0.05)
    elif name.startswith("saturation"):
        out = tf.image.adjust_saturation(x, 1.2 if "+" in name else 0.8)
    elif name == "grayscale":
        out = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
    else:
        raise ValueError(f"unknown perturbation {name!r}; expected one of {', '.join(PERTURBATIONS)}")
    return tf.clip_by_value(out, 0.0, 1.0).numpy()


def robustness(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
               names: tuple[str, ...] = PERTURBATIONS) -> dict[str, float]:
    """Accuracy of `predict` (pixels -> probabilities) on each perturbed copy of `images`."""
    return {name: float((predict(perturb(images, name)).argmax(axis=1) == labels).mean()) for name in names}
