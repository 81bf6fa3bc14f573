"""Photometric augmentation plausible for Wright-Giemsa (Romanowsky) smears: another lab's stain, lamp and camera.

One image's journey, in order: stain uptake (optical-density jitter), optics (defocus, another
camera's resolution), the lamp (exposure, colour temperature), the sensor (noise, gamma) and the
file (JPEG re-encoding); rarely a grayscale camera. Each image draws its own strengths. Geometry
(flips, rotation, zoom, shift) lives in components/train/input.py. Strengths are module constants
so evaluation's perturbation suite (components/evaluate/robustness.py) can be compared with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

# Stain: optical density OD = -log(I / I0) per channel; a lab's stain concentration and timing
# scale it (Tellez et al. 2018 jitter in OD space, here per RGB channel and overall).
OD_SCALE = 0.25  # overall concentration factor in [1 - s, 1 + s]
OD_CHANNEL_SCALE = 0.12  # per-channel factor in [1 - s, 1 + s]
OD_SHIFT = 0.04  # per-channel additive OD
# Lamp and camera.
EXPOSURE = (0.7, 1.25)  # multiplicative light
COLOUR_TEMPERATURE = 0.12  # red gain 1 + t, blue gain 1 - t
GAMMA = (0.7, 1.45)
CONTRAST = 0.25
SATURATION = 0.3
HUE_DELTA = 0.1
# Optics and sensor.
BLUR_SIGMA = (0.0, 1.6)  # pixels of the stored image; 0 half the time
BLUR_PROBABILITY = 0.5
NOISE_SIGMA = (0.0, 0.04)
RESOLUTION = (0.35, 1.0)  # downscale factor before scaling back (another camera's pixel count)
RESOLUTION_PROBABILITY = 0.4
JPEG_QUALITY = (25, 95)
JPEG_PROBABILITY = 0.5
GRAYSCALE_PROBABILITY = 0.12
PHOTOMETRIC_PROBABILITY = 0.9  # a few images stay as the lab made them
# A lamp turned up until the background clips (a model config sets how often): this dataset's background
# is already near white, so such light cannot be normalised away (components/domain.py) and must be learnt.
OVEREXPOSURE = (1.0, 1.3)


def _uniform(low: float, high: float, shape=()) -> tf.Tensor:
    import tensorflow as tf

    return tf.random.uniform(shape, low, high)


def _chance(p: float) -> tf.Tensor:
    import tensorflow as tf

    return tf.random.uniform(()) < p


def stain_jitter(image: tf.Tensor) -> tf.Tensor:
    """Scale and shift optical density, overall and per channel (the stain's concentration and balance)."""
    import tensorflow as tf

    od = -tf.math.log(tf.clip_by_value(image, 1.0 / 255.0, 1.0))
    scale = _uniform(1 - OD_SCALE, 1 + OD_SCALE) * _uniform(1 - OD_CHANNEL_SCALE, 1 + OD_CHANNEL_SCALE, [3])
    od = tf.maximum(od * scale + _uniform(-OD_SHIFT, OD_SHIFT, [3]), 0.0)
    return tf.exp(-od)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor | float) -> tf.Tensor:
    """Separable Gaussian blur of one float image [H, W, 3] (reflect padding); sigma 0 is the identity."""
    import tensorflow as tf

    radius = 4
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, kx, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, ky, [1, 1, 1, 1], "VALID")
    return out[0]


def change_resolution(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
    """Down-sample by `factor` and back: what a camera with fewer pixels over the same field gives."""
    import tensorflow as tf

    shape = tf.shape(image)[:2]
    small = tf.maximum(tf.cast(tf.cast(shape, tf.float32) * factor, tf.int32), 8)
    return tf.image.resize(tf.image.resize(image, small, antialias=True), shape)


def overexpose(image: tf.Tensor, gain: tf.Tensor | float) -> tf.Tensor:
    """More light by `gain` (>= 1), clipped where the sensor saturates."""
    import tensorflow as tf

    return tf.clip_by_value(image * gain, 0.0, 1.0)


def photometric(image: tf.Tensor, overexposure: float = 0.0) -> tf.Tensor:
    """One random lab: float [H, W, 3] in [0, 1] -> float [H, W, 3] in [0, 1].

    With probability `overexposure`, the lab's image is then taken with more light (OVEREXPOSURE).
    """
    import tensorflow as tf

    def change(x):
        x = stain_jitter(x)
        x = tf.cond(_chance(BLUR_PROBABILITY), lambda: gaussian_blur(x, _uniform(*BLUR_SIGMA)), lambda: x)
        x = tf.cond(_chance(RESOLUTION_PROBABILITY), lambda: change_resolution(x, _uniform(*RESOLUTION)), lambda: x)
        t = _uniform(-COLOUR_TEMPERATURE, COLOUR_TEMPERATURE)
        x = x * _uniform(*EXPOSURE) * tf.stack([1 + t, 1.0, 1 - t])
        x = tf.clip_by_value(x, 0.0, 1.0)
        mean = tf.reduce_mean(x)
        x = tf.clip_by_value((x - mean) * _uniform(1 - CONTRAST, 1 + CONTRAST) + mean, 0.0, 1.0)
        x = tf.image.adjust_saturation(x, _uniform(1 - SATURATION, 1 + SATURATION))
        x = tf.image.adjust_hue(x, _uniform(-HUE_DELTA, HUE_DELTA))
        x = tf.clip_by_value(x, 0.0, 1.0) ** _uniform(*GAMMA)
        x = x + tf.random.normal(tf.shape(x)) * _uniform(*NOISE_SIGMA)
        x = tf.clip_by_value(x, 0.0, 1.0)
        quality = tf.cast(_uniform(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1), tf.int32)
        return tf.cond(_chance(JPEG_PROBABILITY), lambda: tf.image.adjust_jpeg_quality(x, quality), lambda: x)

    shape = image.shape
    x = tf.cond(_chance(PHOTOMETRIC_PROBABILITY), lambda: change(image), lambda: image)
    x = tf.cond(
        _chance(GRAYSCALE_PROBABILITY), lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)), lambda: x
    )
    if overexposure > 0:
        x = tf.cond(_chance(overexposure), lambda: overexpose(x, _uniform(*OVEREXPOSURE)), lambda: x)
    x = tf.clip_by_value(x, 0.0, 1.0)
    x.set_shape(shape)
    return x
