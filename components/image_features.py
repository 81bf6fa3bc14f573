"""The per-image monitoring features, in TensorFlow ops: the one definition the served graph computes.

The exported SavedModel (components/train/export.py) returns these as extra outputs of its predict
signatures, computed from the decoded full-size image before it is resized for the model; the drift
reference (components/reference/executor.py) runs the same function over the training split; the request log
only copies the numbers out of the response. Nothing on the request path computes features in Python.

Why these features, for Wright-Giemsa peripheral smears:
- brightness (L* mean and spread, CIELAB, D65): the lamp, exposure and camera gain. On this data the
  class is almost given away by global colour and brightness, so a lamp change is the most likely
  silent failure.
- contrast (RMS of BT.601 grey levels): focus and exposure range.
- saturation and hue (HSV; hue as a circular mean weighted by saturation): stain strength and the
  blue/purple balance that staining time and buffer pH shift.
- per-channel RGB means: the white balance of the camera.
- stain optical density: colour deconvolution with Ruifrok and Johnston's H&E(+DAB) vectors
  (scikit-image's `hed_from_rgb`) on the stained foreground (Otsu on saturation), kept apart from the
  background (plasma and glass). Wright-Giemsa is a Romanowsky stain, so "H" tracks the basophilic
  (azure, nuclear) component and "E" the eosinophilic one only approximately: comparable between
  images of one lab and good for detecting a change, not stain concentrations.

Statistics are global, so they are taken on the image downscaled to at most FEATURE_SIDE pixels a
side (antialiased bilinear): cheap inside the graph, and independent of the model's input size.
`components/host_features.py` keeps a NumPy/scikit-image twin for host-side use (validation, tests);
tests/monitoring/test_graph_features.py holds the two within FEATURE_TOLERANCE.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

FEATURE_SIDE = 128
OTSU_BINS = 256
MIN_FOREGROUND_PIXELS = 16  # fewer stained pixels than this: no foreground (a blank or washed-out image)

FEATURE_NAMES: tuple[str, ...] = (
    "brightness_mean",
    "brightness_std",
    "contrast",
    "saturation_mean",
    "hue_mean",
    "red_mean",
    "green_mean",
    "blue_mean",
    "stain_h_mean",
    "stain_h_std",
    "stain_e_mean",
    "stain_e_std",
    "foreground_fraction",
    "background_brightness",
)

# Which features describe stain and which brightness; the drift report groups by these.
STAIN_FEATURES = ("saturation_mean", "hue_mean", "stain_h_mean", "stain_h_std", "stain_e_mean", "stain_e_std")
BRIGHTNESS_FEATURES = ("brightness_mean", "brightness_std", "contrast", "background_brightness")

# A signature output per feature, named with this prefix: self-describing in GetModelMetadata,
# selectable one by one with output_filter, and copied by name into the request log.
OUTPUT_PREFIX = "feature_"
FEATURE_OUTPUTS: tuple[str, ...] = tuple(OUTPUT_PREFIX + name for name in FEATURE_NAMES)

# Largest absolute difference between the graph and the host twin on the same image (test-enforced).
# L* is 0-100, the rest 0-1 or optical densities below ~1; JPEG decoders and float32 differ slightly.
FEATURE_TOLERANCE: dict[str, float] = {name: (0.5 if "brightness" in name else 0.02) for name in FEATURE_NAMES}

# sRGB (D65) -> CIE Y, and Ruifrok & Johnston's stain matrix, both as scikit-image defines them.
_Y_FROM_RGB = (0.212671, 0.715160, 0.072169)
_HED_FROM_RGB = (
    (1.8779827369, -1.0076786863, -0.5561158182),
    (-0.0659080622, 1.1347303725, -0.1355217986),
    (-0.6019073634, -0.4804141885, 1.5735880720),
)
_GREY_FROM_RGB = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma
_OD_FLOOR = 1e-6  # scikit-image's floor before the log in separate_stains


def _downscale(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] -> at most FEATURE_SIDE a side, by an integer step as the host twin does."""
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    step = tf.maximum(1, tf.cast(tf.math.ceil(tf.cast(tf.maximum(height, width), tf.float32) / FEATURE_SIDE), tf.int32))
    size = tf.stack([tf.maximum(1, height // step), tf.maximum(1, width // step)])
    return tf.cond(
        step > 1,
        lambda: tf.clip_by_value(tf.image.resize(image, size, method="bilinear", antialias=True), 0.0, 1.0),
        lambda: image,
    )


def _masked_mean_std(values: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and population std of values where mask is 1; 0 and 0 for an empty mask."""
    import tensorflow as tf

    count = tf.reduce_sum(mask)
    mean = tf.math.divide_no_nan(tf.reduce_sum(values * mask), count)
    var = tf.math.divide_no_nan(tf.reduce_sum(mask * tf.square(values - mean)), count)
    return mean, tf.sqrt(var)


def otsu_threshold(values: tf.Tensor) -> tf.Tensor:
    """scikit-image's threshold_otsu (256 bins over [min, max], bin centres), in float64."""
    import tensorflow as tf

    values = tf.cast(values, tf.float64)
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    high = tf.maximum(high, low + 1e-9)  # a constant image: one bin, no threshold below its value
    counts = tf.cast(tf.histogram_fixed_width(values, tf.stack([low, high]), nbins=OTSU_BINS), tf.float64)
    width = (high - low) / OTSU_BINS
    centres = low + width * (tf.range(OTSU_BINS, dtype=tf.float64) + 0.5)
    weight1 = tf.cumsum(counts)
    weight2 = tf.cumsum(counts, reverse=True)
    mean1 = tf.math.divide_no_nan(tf.cumsum(counts * centres), weight1)
    mean2 = tf.math.divide_no_nan(tf.cumsum(counts * centres, reverse=True), weight2)
    between = weight1[:-1] * weight2[1:] * tf.square(mean1[:-1] - mean2[1:])
    return tf.cast(tf.gather(centres, tf.argmax(between)), tf.float32)


def tf_image_features(image: tf.Tensor) -> tf.Tensor:
    """One decoded image, float32 [H, W, 3] in [0, 1] -> float32 [len(FEATURE_NAMES)] in FEATURE_NAMES order."""
    import tensorflow as tf

    rgb = tf.reshape(_downscale(tf.cast(image, tf.float32)), [-1, 3])

    linear = tf.where(rgb > 0.04045, tf.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
    y = tf.linalg.matvec(linear, tf.constant(_Y_FROM_RGB, tf.float32))
    f = tf.where(y > 0.008856, tf.pow(tf.maximum(y, 0.008856), 1.0 / 3.0), 7.787 * y + 16.0 / 116.0)
    lightness = 116.0 * f - 16.0

    hsv = tf.image.rgb_to_hsv(rgb)
    hue_angle, saturation = hsv[:, 0] * (2.0 * math.pi), hsv[:, 1]
    weight = saturation + 1e-9
    hue = tf.math.atan2(tf.reduce_sum(tf.sin(hue_angle) * weight), tf.reduce_sum(tf.cos(hue_angle) * weight))
    hue = tf.math.floormod(hue, 2.0 * math.pi) / (2.0 * math.pi)
    grey = tf.linalg.matvec(rgb, tf.constant(_GREY_FROM_RGB, tf.float32))

    # Stained foreground: the more saturated pixels (cells), Otsu-separated from plasma and glass.
    foreground = tf.cast(saturation > otsu_threshold(saturation), tf.float32)
    foreground = foreground * tf.cast(tf.reduce_sum(foreground) >= MIN_FOREGROUND_PIXELS, tf.float32)
    background = 1.0 - foreground

    density = tf.math.log(tf.maximum(rgb, _OD_FLOOR)) / math.log(_OD_FLOOR)
    stains = tf.maximum(tf.linalg.matmul(density, tf.constant(_HED_FROM_RGB, tf.float32)), 0.0)
    h_mean, h_std = _masked_mean_std(stains[:, 0], foreground)
    e_mean, e_std = _masked_mean_std(stains[:, 1], foreground)
    bg_mean, _ = _masked_mean_std(lightness, background)
    bg_brightness = tf.where(tf.reduce_sum(background) > 0, bg_mean, tf.reduce_mean(lightness))

    channel_means = tf.reduce_mean(rgb, axis=0)
    return tf.stack(
        [
            tf.reduce_mean(lightness),
            tf.math.reduce_std(lightness),
            tf.math.reduce_std(grey),
            tf.reduce_mean(saturation),
            hue,
            channel_means[0],
            channel_means[1],
            channel_means[2],
            h_mean,
            h_std,
            e_mean,
            e_std,
            tf.reduce_mean(foreground),
            bg_brightness,
        ]
    )


def tf_batch_features(images: tf.Tensor) -> tf.Tensor:
    """A batch of same-size decoded images [N, H, W, 3] -> [N, len(FEATURE_NAMES)]."""
    import tensorflow as tf

    return tf.map_fn(tf_image_features, images, fn_output_signature=tf.TensorSpec([len(FEATURE_NAMES)], tf.float32))


def feature_outputs(features: tf.Tensor) -> dict[str, tf.Tensor]:
    """[N, len(FEATURE_NAMES)] -> {FEATURE_OUTPUTS[i]: [N]}: the signature outputs to merge with `outputs.update`."""
    return {output: features[:, i] for i, output in enumerate(FEATURE_OUTPUTS)}


_HOST_FUNCTIONS: dict[str, object] = {}


def _host_function(kind: str):
    """The graph functions above, traced once per process, for host-side callers (reference, folders)."""
    import tensorflow as tf

    from components import domain

    if kind not in _HOST_FUNCTIONS:
        if kind == "encoded":
            fn = tf.function(
                lambda e: tf_image_features(domain.tf_decode(e)), input_signature=[tf.TensorSpec([], tf.string)]
            )
        else:
            fn = tf.function(
                lambda rgb: tf_image_features(tf.image.convert_image_dtype(rgb, tf.float32)),
                input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
            )
        _HOST_FUNCTIONS[kind] = fn
    return _HOST_FUNCTIONS[kind]


def encoded_image_features(encoded: bytes) -> dict[str, float]:
    """FEATURE_NAMES of encoded image bytes, decoded as the served graph decodes them.

    Raises ValueError when TensorFlow cannot decode the bytes.
    """
    import tensorflow as tf

    try:
        values = _host_function("encoded")(tf.constant(encoded)).numpy()
    except tf.errors.InvalidArgumentError as exc:
        raise ValueError(f"cannot decode image: {exc.message.splitlines()[0]}") from None
    return dict(zip(FEATURE_NAMES, (float(v) for v in values)))


def rgb_image_features(rgb: np.ndarray) -> dict[str, float]:  # noqa: F821
    """FEATURE_NAMES of a uint8 RGB array (H, W, 3), by the graph's definition."""
    import tensorflow as tf

    values = _host_function("rgb")(tf.constant(rgb, tf.uint8)).numpy()
    return dict(zip(FEATURE_NAMES, (float(v) for v in values)))
