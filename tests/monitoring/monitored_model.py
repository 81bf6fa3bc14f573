"""A tiny model exported by the project's own export code (components/train/export.py), for the monitoring tests.

Not trained: global average pooling and a fixed dense layer at 32 px, so it is fast and deterministic; the
signatures, their monitoring outputs and the warmup file are exactly what the trainer exports.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SIZE = 32


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def export_monitored_model(version_dir: str | Path, centroids: np.ndarray | None = None) -> Path:
    """Export the tiny model to `version_dir` (e.g. base/leukemia/1).

    With `centroids` (4 x 3 mean RGB in [0, 1], class order), it is a nearest-centroid classifier of the
    image's mean colour, so it classifies the smear-like test images about as their tint says.
    """
    import keras

    from components.train.export import export_saved_model

    if centroids is None:
        kernel = np.array([[4.0, -2.0, 0.0, -1.0], [-1.0, 3.0, -2.0, 0.5], [-2.0, 0.0, 3.0, 1.0]], np.float32)
        bias = np.zeros(4, np.float32)
    else:  # -|x - c|^2 up to a constant, sharpened
        scale = 400.0
        kernel = (2.0 * scale * np.asarray(centroids, np.float32)).T
        bias = -scale * (np.asarray(centroids, np.float32) ** 2).sum(axis=1)
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(
        4,
        activation="softmax",
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias),
    )
    model = keras.Model(inputs, dense(pooled))
    warm = png(np.full((SIZE, SIZE, 3), 180, np.uint8))
    return export_saved_model(
        model, version_dir, model_name="tiny", image_size=SIZE, brightness="none", warmup_images=[warm]
    )
