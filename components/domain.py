"""The one definition of the task: classes, image size, decoding and normalisation.

Training, the exported serving graph, validation and monitoring all import this
module, so none of them can disagree on what an input image means.

Host-side code (validation, dedup, monitoring) uses the Pillow functions; the
TensorFlow functions are used inside tf.data and inside the exported SavedModel.
TensorFlow is imported lazily so that light commands start fast.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

# Order matters: it is the index order of every model's output.
CLASS_NAMES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")
NUM_CLASSES: int = len(CLASS_NAMES)

# The public dataset is 224x224; every model's input is this size unless a
# profile asks for a smaller one (the quick profile, to fit on 2 CPU cores).
IMAGE_SIZE: int = 224
CHANNELS: int = 3

# Files the data steps look at. TIFF is read here (Pillow) but not by
# tf.io.decode_image: the client converts it before sending to serving.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Input normalisation (the paper's "adjusting brightness"), part of the model graph so serving
# applies it too. "none" keeps the pixels; "mean" rescales each image so its mean intensity is
# BRIGHTNESS_TARGET; "background" is a white balance and exposure referenced to the smear's
# background (glass and plasma, the brightest quarter of a low-resolution copy): each channel is
# scaled so the background becomes BACKGROUND_TARGET grey, which cancels a lamp's intensity and
# colour temperature and a camera's white balance (all per-channel gains on the light that reaches it).
BRIGHTNESS_METHODS: tuple[str, ...] = ("none", "mean", "background")
BRIGHTNESS_TARGET: float = 0.5
BACKGROUND_TARGET: float = 0.92
BACKGROUND_QUANTILE: float = 0.75  # pixels brighter than this quantile of luminance are background
BACKGROUND_GRID: int = 32  # the low-resolution copy the background is estimated on
BACKGROUND_GAIN_RANGE: tuple[float, float] = (0.5, 4.0)


def class_index(name: str) -> int:
    """Index of a class name, matched case-insensitively."""
    lowered = {c.lower(): i for i, c in enumerate(CLASS_NAMES)}
    try:
        return lowered[name.lower()]
    except KeyError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASS_NAMES)}") from None


def canonical_class(name: str) -> str:
    """The canonical spelling of a class name (``pre`` -> ``Pre``)."""
    return CLASS_NAMES[class_index(name)]


# ---------------------------------------------------------------- host side (Pillow)


class ImageDecodeError(ValueError):
    """An input could not be decoded as an image."""


def load_rgb(source: str | Path | bytes) -> np.ndarray:
    """Decode a file or bytes to an RGB uint8 array (H, W, 3).

    Grayscale, palette, CMYK and 16-bit images are converted to RGB; an alpha
    channel is dropped, as ``tf.io.decode_image(channels=3)`` does.
    """
    from PIL import Image, UnidentifiedImageError

    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                arr = (arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0).round().astype(np.uint8)
                return np.repeat(arr[:, :, None], 3, axis=2)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        name = "bytes" if isinstance(source, (bytes, bytearray)) else str(source)
        raise ImageDecodeError(f"cannot decode image {name}: {exc}") from exc


def to_unit_float(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [0, 1], the models' input contract."""
    return rgb.astype(np.float32) / 255.0


# ---------------------------------------------------------------- graph side (TensorFlow)


def tf_decode(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (scalar string) -> float32 [H, W, 3] in [0, 1].

    Reads whatever ``tf.io.decode_image`` reads (JPEG incl. CMYK, PNG incl.
    16-bit, BMP, GIF first frame, WebP); grayscale and RGBA become RGB.
    """
    import tensorflow as tf

    # Decode as uint8, then convert: TF's WebP decoder only supports uint8 ("WebP only supports uint8 for dtype").
    image = tf.io.decode_image(encoded, channels=CHANNELS, expand_animations=False)
    image.set_shape([None, None, CHANNELS])
    return tf.image.convert_image_dtype(image, tf.float32)


def tf_resize(image: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
    """Resize float [H, W, 3] (or a batch) to size x size, bilinear with antialias."""
    import tensorflow as tf

    return tf.clip_by_value(tf.image.resize(image, (size, size), method="bilinear", antialias=True), 0.0, 1.0)


def tf_adjust_brightness(image: tf.Tensor, method: str = "none") -> tf.Tensor:
    """Apply the configured brightness adjustment to float images in [0, 1]."""
    import tensorflow as tf

    if method == "none":
        return image
    if method == "mean":
        mean = tf.reduce_mean(image, axis=[-3, -2, -1], keepdims=True)
        return tf.clip_by_value(image * (BRIGHTNESS_TARGET / tf.maximum(mean, 1e-3)), 0.0, 1.0)
    if method == "background":
        return tf.clip_by_value(image * tf_background_gains(image), 0.0, 1.0)
    raise ValueError(f"unknown brightness method {method!r}; expected one of {BRIGHTNESS_METHODS}")


def tf_background_gains(image: tf.Tensor) -> tf.Tensor:
    """The per-channel gains that take the background to BACKGROUND_TARGET grey, shaped as tf_background_colour."""
    import tensorflow as tf

    low, high = BACKGROUND_GAIN_RANGE
    return tf.clip_by_value(BACKGROUND_TARGET / tf.maximum(tf_background_colour(image), 1e-3), low, high)


def tf_background_colour(image: tf.Tensor) -> tf.Tensor:
    """The mean RGB of the background of float images [..., H, W, 3] in [0, 1], shaped [..., 1, 1, 3].

    Estimated on a BACKGROUND_GRID-square area-averaged copy (cheap, and blind to noise and JPEG
    blocks): the pixels whose luminance is at or above its BACKGROUND_QUANTILE.
    """
    import tensorflow as tf

    batched = image if image.shape.rank == 4 else image[None]
    small = tf.image.resize(batched, (BACKGROUND_GRID, BACKGROUND_GRID), method="area")
    flat = tf.reshape(small, [tf.shape(small)[0], -1, CHANNELS])
    luminance = tf.reduce_mean(flat, axis=-1)
    k = int(BACKGROUND_GRID * BACKGROUND_GRID * (1.0 - BACKGROUND_QUANTILE))
    brightest = tf.math.top_k(luminance, k=k).indices
    colour = tf.reduce_mean(tf.gather(flat, brightest, batch_dims=1), axis=1)[:, None, None, :]
    return colour if image.shape.rank == 4 else colour[0]


def tf_preprocess_encoded(encoded: tf.Tensor, size: int = IMAGE_SIZE, brightness: str = "none") -> tf.Tensor:
    """The whole serving-side path for one image: bytes -> model input [size, size, 3]."""
    return tf_adjust_brightness(tf_resize(tf_decode(encoded), size), brightness)
