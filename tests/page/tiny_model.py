"""A tiny Keras model exported the way the training step exports (docs/architecture.md), for page tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from components import domain

SIZE = 32


def build_model(size: int = SIZE, seed: int = 0):
    """Conv -> conv named `feature_map` -> global pooling -> softmax head named `probabilities`."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="feature_map")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(domain.NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def quadrant_images(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is only the colour of a patch in the top-left quadrant; the rest is noise."""
    rng = np.random.default_rng(seed)
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]], dtype=np.float32)
    x = np.clip(rng.normal(0.5, 0.05, (n, size, size, 3)), 0, 1).astype(np.float32)
    y = np.arange(n) % domain.NUM_CLASSES
    half, patch = size // 2, size // 4
    for i in range(n):
        top, left = rng.integers(0, half - patch + 1, 2)
        x[i, top : top + patch, left : left + patch] = colours[y[i]]
    return x, y


def train_quadrant_model(size: int = SIZE, seed: int = 0):
    """A tiny model trained until it reads the top-left patch (a few seconds on CPU)."""
    import keras

    model = build_model(size, seed)
    x, y = quadrant_images(256, size, seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model


def encode_png(pixels: np.ndarray) -> bytes:
    """float [H, W, 3] in [0, 1] -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def export(model, version_dir: Path, threshold: float = 0.6) -> Path:
    """SavedModel with `serving_default` (tf.string images -> probabilities, label) plus assets.extra."""
    import keras
    import tensorflow as tf

    size = int(model.inputs[0].shape[1])
    names = tf.constant(list(domain.CLASS_NAMES))

    def outputs(probs):
        return {"probabilities": probs, "label": tf.gather(names, tf.argmax(probs, axis=-1))}

    def serve(images):
        pixels = tf.map_fn(lambda b: domain.tf_preprocess_encoded(b, size), images, fn_output_signature=tf.float32)
        return outputs(model(pixels, training=False))

    def serve_pixels(pixels):
        return outputs(model(pixels, training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(
        "predict_pixels",
        serve_pixels,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    version_dir = Path(version_dir)
    archive.write_out(str(version_dir), verbose=False)
    extra = version_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    model.save(extra / "model.keras")
    meta = {
        "model": "tiny",
        "image_size": size,
        "class_names": list(domain.CLASS_NAMES),
        "low_confidence_threshold": threshold,
    }
    (extra / "leukoflow.json").write_text(json.dumps(meta))
    return version_dir
