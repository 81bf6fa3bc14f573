"""The leukocytes of a smear image: one segmentation, for the probes, the pseudo-slide groups and the served graph.

In a Wright-Giemsa smear the white cells (nucleus and most of their cytoplasm) are the purple/magenta
structures: they absorb green far more than red or blue. Red cells (lavender-grey here) and the
background (glass and plasma, white to yellow) absorb the three about equally. So, per pixel:

1. white balance to the smear's background (the brightest quarter of the image, as
   components/domain.py's "background" normalisation defines it), which cancels a yellow lamp;
2. optical density per channel, OD = -ln(I / background);
3. the *stain excess* OD_green - (OD_red + OD_blue) / 2: high on leukocytes, near 0 elsewhere;
4. a leukocyte pixel has stain excess above Otsu's threshold of the image, and above STAIN_FLOOR
   (so that an image with no white cell, whose Otsu split falls among red cells, gives no mask);
5. cleanup: a 3x3 opening (JPEG speckle), holes filled, components smaller than MIN_OBJECT_FRACTION
   of the image dropped, then dilated by DILATE_FRACTION of the side (the pale rim of cytoplasm).

Measured on random images of the public data: Otsu's threshold 0.08-0.46 (median 0.19); red cells reach
about 0.15 (the 99th percentile below Otsu's threshold, median over 60 images). With the floor at 0.2 the
mask covers 2-24% of an image (median 10%, 30 images), and the same segmentation run again on the image
with its leukocytes removed finds at most 0.2% (at 0.12 it found up to 8%: red cells). Looked at, the
mask follows the blasts and lymphocytes and leaves red cells out, also on the yellow-background Pro
images where a saturation threshold takes the background.

`leukocyte_mask` (NumPy, scikit-image) is used on the host (evaluation probes, pseudo-slides);
`tf_leukocyte_fraction` is its graph twin (no hole filling or component sizes: max-pool morphology only),
the area the served model finds: below MIN_LEUKOCYTE_FRACTION the served graph refers the image, "no white
cell in view" (components/train/export.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from components import domain

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

STAIN_FLOOR: float = 0.2  # stain excess (optical density) below which no pixel is a leukocyte
MIN_OBJECT_FRACTION: float = 0.001  # smaller components are debris or platelets (50 px at 224)
DILATE_FRACTION: float = 0.01  # the mask grows by this share of the image side (2 px at 224)
# Below this share of the image covered by leukocytes, the served graph finds no white cell in view. Measured
# at 192 px on 150 random images of the public data (tf_leukocyte_fraction, 5x5 opening): 99.3% of them with
# their leukocytes removed read below it, and 2.7% of the clean ones (Pro smears whose blasts are stained pale
# pink, stain excess under STAIN_FLOOR: a limitation of this segmentation, and those images are referred).
MIN_LEUKOCYTE_FRACTION: float = 0.005
# The graph's opening (a max-pool square) as a share of the side: 5 px at 192 (3 px left rim fragments of removed
# cells, 0.6-0.8% of the image); scaled with the side so small inputs keep their small cells.
GRAPH_OPENING_FRACTION: float = 5 / 192


def _unit(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    return rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """Mean RGB (float, [0, 1]) of the brightest (1 - BACKGROUND_QUANTILE) of the pixels: glass and plasma."""
    x = _unit(rgb)
    luminance = x.mean(axis=-1)
    return x[luminance >= np.quantile(luminance, domain.BACKGROUND_QUANTILE)].mean(axis=0)


def stain_excess(rgb: np.ndarray) -> np.ndarray:
    """Per pixel OD_green - (OD_red + OD_blue) / 2 after white balance to the background ([H, W], float32)."""
    x = _unit(rgb)
    density = -np.log(np.clip(x / np.maximum(background_colour(x), 1e-3), 1e-3, 1.0))
    return density[..., 1] - 0.5 * (density[..., 0] + density[..., 2])


def leukocyte_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean [H, W]: the leukocytes of an RGB image (uint8, or float in [0, 1])."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    excess = stain_excess(rgb)
    try:
        threshold = max(float(threshold_otsu(excess)), STAIN_FLOOR)
    except ValueError:  # a constant image
        return np.zeros(excess.shape, dtype=bool)
    mask = ndimage.binary_opening(excess > threshold, structure=np.ones((3, 3), bool))
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= MIN_OBJECT_FRACTION * mask.size
        keep[0] = False
        mask = keep[labels]
    grow = max(1, round(DILATE_FRACTION * max(mask.shape)))
    return ndimage.binary_dilation(mask, iterations=grow) if mask.any() else mask


def remove_leukocytes(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 copy of `rgb` with its leukocytes filled with the smear's background colour."""
    x = np.asarray(rgb)
    mask = leukocyte_mask(x) if mask is None else mask
    out = (_unit(x) * 255.0).round().astype(np.uint8) if x.dtype != np.uint8 else x.copy()
    out[mask] = np.round(background_colour(x) * 255.0).astype(np.uint8)
    return out


def paste_leukocytes(source: np.ndarray, background: np.ndarray) -> np.ndarray:
    """uint8: `background` with its own leukocytes removed and `source`'s pasted where they are in `source`.

    Both must be the same size (the public data's images are all 224 x 224).
    """
    if np.asarray(source).shape != np.asarray(background).shape:
        raise ValueError(f"source {np.asarray(source).shape} and background {np.asarray(background).shape} differ")
    source_mask = leukocyte_mask(source)
    out = remove_leukocytes(background)
    src = np.asarray(source)
    src = src if src.dtype == np.uint8 else (_unit(src) * 255.0).round().astype(np.uint8)
    out[source_mask] = src[source_mask]
    return out


def swap_partners(labels: np.ndarray, seed: int) -> np.ndarray:
    """For each image, the index of a seeded random image of another class (its background donor)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    partners = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        others = np.flatnonzero(labels != label)
        if not len(others):
            raise ValueError("context swapping needs images of at least two classes")
        partners[i] = others[rng.integers(len(others))]
    return partners


# ---------------------------------------------------------------- graph side (TensorFlow)


def tf_leukocyte_fraction(image: tf.Tensor) -> tf.Tensor:
    """float32 [..., H, W, 3] in [0, 1] -> [...]: the share of each image that is leukocyte.

    The graph twin of `leukocyte_mask`'s area: the same background, stain excess, threshold
    (Otsu per image, floored) and an opening by max-pooling (GRAPH_OPENING_FRACTION of the side); small components and holes are left
    as they are, so it reads a little differently, but an image without white cells reads ~0.
    """
    import tensorflow as tf

    from components.image_features import otsu_threshold

    batched = image if image.shape.rank == 4 else image[None]
    background = domain.tf_background_colour(batched)
    density = -tf.math.log(tf.clip_by_value(batched / tf.maximum(background, 1e-3), 1e-3, 1.0))
    excess = density[..., 1] - 0.5 * (density[..., 0] + density[..., 2])

    def one(values):
        return tf.maximum(otsu_threshold(tf.reshape(values, [-1])), STAIN_FLOOR)

    thresholds = tf.map_fn(one, excess, fn_output_signature=tf.TensorSpec([], tf.float32))
    mask = tf.cast(excess > thresholds[:, None, None], tf.float32)[..., None]
    side = batched.shape[-2] or 192
    window = max(1, round(side * GRAPH_OPENING_FRACTION)) // 2 * 2 + 1  # odd: centred on the pixel
    eroded = -tf.nn.max_pool2d(-mask, window, 1, "SAME")
    opened = tf.nn.max_pool2d(eroded, window, 1, "SAME")
    fraction = tf.reduce_mean(opened, axis=[1, 2, 3])
    return fraction if image.shape.rank == 4 else fraction[0]
