"""Fixed perturbations of the test images: how much accuracy survives another lab's stain, lamp and camera.

Each perturbation is applied with Pillow to the full-size decoded test image, the result is
encoded (BMP, lossless; JPEG for the JPEG perturbation) and sent through the exported model's
`serving_default`, as a client would send it. The code is deliberately independent of the
training augmentation (components/train/augment.py, TensorFlow ops): a model is not graded by
the implementation it was trained with. Deterministic: every model and run sees the same images.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# name -> (kind, strength). Severities are written into the name so results.md shows them.
PERTURBATIONS: dict[str, tuple[str, float]] = {
    "brightness +15%": ("brightness", 1.15),
    "brightness -15%": ("brightness", 0.85),
    "brightness -25%": ("brightness", 0.75),
    "contrast +15%": ("contrast", 1.15),
    "contrast -20%": ("contrast", 0.80),
    "saturation +20%": ("saturation", 1.20),
    "saturation -20%": ("saturation", 0.80),
    "hue +0.05": ("hue", 0.05),
    "hue -0.05": ("hue", -0.05),
    "gamma 0.8": ("gamma", 0.8),
    "gamma 1.25": ("gamma", 1.25),
    "colour temperature warm (R x1.08, B x0.92)": ("temperature", 0.08),
    "colour temperature cool (R x0.92, B x1.08)": ("temperature", -0.08),
    "JPEG quality 30": ("jpeg", 30),
    "Gaussian blur radius 1": ("blur", 1.0),
    "Gaussian blur radius 1.5": ("blur", 1.5),
    "sensor noise sigma 0.03": ("noise", 0.03),
    "resolution x0.5": ("resolution", 0.5),
    "grayscale": ("grayscale", 0.0),
}
# Reported with their own floor, not the plausible-perturbation floor: no stain or lamp makes them.
SEPARATE_FLOOR: tuple[str, ...] = ("grayscale",)
NOISE_SEED = 7

# Another objective or camera adapter: the field of view scaled by this factor, with its own gate rule
# (at each scale the model is accurate or refers; components/promote/gate/policy.py). Below 1 the
# image shrinks and the field around it is the smear mirrored at its edges (more cells in view, as at a
# lower power; a flat border would be a frame no microscope draws); above 1 a centre crop is resized back.
MAGNIFICATIONS: dict[str, tuple[str, float]] = {
    f"magnification x{scale:g}": ("magnification", scale) for scale in (0.6, 0.8, 1.25, 1.5, 2.0)
}
_ALL: dict[str, tuple[str, float]] = {**PERTURBATIONS, **MAGNIFICATIONS}


def plausible(names: Sequence[str] | None = None) -> list[str]:
    """The perturbations a lab's stain, lamp or camera plausibly produces (the gated set)."""
    return [n for n in (names or PERTURBATIONS) if n not in SEPARATE_FLOOR]


def perturb(rgb: np.ndarray, name: str, index: int = 0) -> np.ndarray:
    """One named perturbation of a uint8 RGB image [H, W, 3]; returns uint8 [H, W, 3]."""
    from PIL import Image, ImageEnhance, ImageFilter

    try:
        kind, strength = _ALL[name]
    except KeyError:
        raise ValueError(f"unknown perturbation {name!r}; expected one of {', '.join(_ALL)}") from None
    if kind == "magnification":
        return magnify(rgb, strength)
    img = Image.fromarray(rgb, "RGB")
    if kind == "brightness":
        return np.asarray(ImageEnhance.Brightness(img).enhance(strength))
    if kind == "contrast":
        return np.asarray(ImageEnhance.Contrast(img).enhance(strength))
    if kind == "saturation":
        return np.asarray(ImageEnhance.Color(img).enhance(strength))
    if kind == "hue":
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(strength * 256))) % 256
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    if kind == "blur":
        return np.asarray(img.filter(ImageFilter.GaussianBlur(strength)))
    if kind == "grayscale":
        return np.asarray(img.convert("L").convert("RGB"))
    if kind == "resolution":
        w, h = img.size
        small = img.resize((max(1, round(w * strength)), max(1, round(h * strength))), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR))
    x = rgb.astype(np.float64) / 255.0
    if kind == "gamma":
        x = x**strength
    elif kind == "temperature":
        x = x * np.array([1 + strength, 1.0, 1 - strength])
    elif kind == "noise":
        x = x + np.random.default_rng(NOISE_SEED + index).normal(0.0, strength, x.shape)
    elif kind == "jpeg":
        return rgb  # the loss happens in encode()
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def magnify(rgb: np.ndarray, scale: float) -> np.ndarray:
    """uint8 [H, W, 3] as seen at `scale` times the magnification, the same size: zoom in or out about the centre."""
    from PIL import Image

    if not scale > 0:
        raise ValueError(f"magnification must be positive, got {scale!r}")
    height, width = rgb.shape[:2]
    img = Image.fromarray(rgb, "RGB")
    if scale >= 1:
        crop_h, crop_w = max(1, round(height / scale)), max(1, round(width / scale))
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return np.asarray(img.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BILINEAR))
    small = np.asarray(img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR))
    top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    pad = ((top, height - small.shape[0] - top), (left, width - small.shape[1] - left), (0, 0))
    return np.pad(small, pad, mode="symmetric")


def encode(rgb: np.ndarray, name: str | None = None) -> bytes:
    """The bytes a client would send: BMP, or JPEG at the perturbation's quality.

    Any lossless format gives the model the same pixels; BMP is the cheapest to write and to decode.
    PNG, even stored uncompressed (compress_level 0), took 20 s of the suite's 29 s of preparation
    per model (19 sets of 471 images on 2 cores) against 1 s for BMP, and TF decodes BMP 2.5x faster.
    """
    from PIL import Image

    buffer = io.BytesIO()
    if name is not None and PERTURBATIONS.get(name, ("", 0))[0] == "jpeg":
        Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=int(PERTURBATIONS[name][1]))
    else:
        Image.fromarray(rgb, "RGB").save(buffer, format="BMP")
    return buffer.getvalue()


def perturbed_bytes(images: Sequence[np.ndarray], name: str) -> list[bytes]:
    return [encode(perturb(img, name, i), name) for i, img in enumerate(images)]


def perturbed_sets(
    images: Sequence[np.ndarray], names: Sequence[str] = tuple(PERTURBATIONS)
) -> Iterator[tuple[str, list[bytes]]]:
    """(name, encoded perturbed images) in order, the next set prepared in a thread while the caller uses this one.

    Pillow and NumPy release the GIL, so the preparation runs on the core the model leaves idle:
    the suite took 125 s instead of 151 s for MobileNetV2 at 192 px on 2 cores, the same accuracies.
    """
    names = list(names)
    if not names:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="perturb") as pool:
        pending = pool.submit(perturbed_bytes, images, names[0])
        for i, name in enumerate(names):
            current = pending.result()
            if i + 1 < len(names):
                pending = pool.submit(perturbed_bytes, images, names[i + 1])
            yield name, current


def robustness(
    predict: Callable[[list[bytes]], np.ndarray],
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    names: Sequence[str] = tuple(PERTURBATIONS),
) -> dict[str, float]:
    """Accuracy of `predict` (encoded images -> probabilities) on each perturbed copy of `images`."""
    labels = np.asarray(labels)
    return {
        name: float((predict(encoded).argmax(axis=1) == labels).mean())
        for name, encoded in perturbed_sets(images, names)
    }
