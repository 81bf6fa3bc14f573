"""Right for the right reason: does the stage come from the leukocytes, or from the slide around them?

Three probes per model, all with the one segmentation of components/leukocytes.py:

- **leukocytes removed**: every white cell filled with the smear's background colour. No stage of ALL can
  be read from a smear without a white cell, so a model that reads the cells refers these images; the
  share it still answers, and how often those answers are the true stage, measure how much it reads the
  slide (red cells, background, stain, camera) instead.
- **context swapped**: one image's leukocytes pasted on the background of an image of another class (its
  own leukocytes removed). Among the answered images, the share whose answer is the leukocytes' class
  against the share whose answer is the background's class.
- **attention**: the Grad-CAM mass on the leukocytes divided by the area they cover (1: the model looks at
  them no more than at anything else), median over images, from the Keras copy kept beside the SavedModel.

The first two go through `serving_default` on encoded bytes (BMP, lossless), as a client sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from components import leukocytes
from components.evaluate.robustness import encode

SWAP_SEED = 11
ATTENTION_IMAGES = 120  # Grad-CAM is one gradient pass per image: a fixed, evenly spread subset

Run = Callable[[list[bytes]], dict[str, np.ndarray]]


def _answered(out: dict[str, np.ndarray]) -> np.ndarray:
    return ~out["refer"].astype(bool) if "refer" in out else np.ones(len(out["probabilities"]), bool)


def _share(mask: np.ndarray, of: np.ndarray) -> float | None:
    return float(mask[of].mean()) if of.any() else None


def leukocytes_removed(run: Run, images: Sequence[np.ndarray], labels: np.ndarray) -> dict:
    """Referral and accuracy of what is still answered, on the images with their leukocytes removed."""
    labels = np.asarray(labels)
    masks = [leukocytes.leukocyte_mask(img) for img in images]
    out = run([encode(leukocytes.remove_leukocytes(img, m)) for img, m in zip(images, masks)])
    answered = _answered(out)
    right = out["probabilities"].argmax(axis=1) == labels
    return {
        "images": len(labels),
        "leukocyte_area_median": float(np.median([m.mean() for m in masks])) if masks else None,
        "referred": float(1.0 - answered.mean()) if len(labels) else None,
        "answered": int(answered.sum()),
        "answered_accuracy": _share(right, answered),
    }


def _same_size(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    if image.shape == like.shape:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image, "RGB").resize((like.shape[1], like.shape[0]), Image.BILINEAR))


def context_swapped(run: Run, images: Sequence[np.ndarray], labels: np.ndarray, seed: int = SWAP_SEED) -> dict:
    """Leukocytes of image i on the background of another class's image j: follows i's class, or j's?"""
    labels = np.asarray(labels)
    partners = leukocytes.swap_partners(labels, seed)
    swapped = [
        encode(leukocytes.paste_leukocytes(images[i], _same_size(images[j], images[i]))) for i, j in enumerate(partners)
    ]
    out = run(swapped)
    answered = _answered(out)
    predicted = out["probabilities"].argmax(axis=1)
    return {
        "images": len(labels),
        "referred": float(1.0 - answered.mean()) if len(labels) else None,
        "answered": int(answered.sum()),
        "follows_leukocytes": _share(predicted == labels, answered),
        "follows_background": _share(predicted == labels[partners], answered),
        "seed": seed,
    }


def attention_subset(count: int, limit: int = ATTENTION_IMAGES) -> np.ndarray:
    """Indices of at most `limit` images spread evenly over `count` (the same ones for every model)."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int)) if count else np.array([], int)


def gradcam_function(keras_path: str | Path):
    """A function: float32 pixels [N, size, size, 3] -> Grad-CAM maps [N, h, w] of each image's predicted class.

    Grad-CAM on the logits (softmax saturates and blanks the map), from the layer `feature_map`, as the
    page's explanation computes it (serving/page/gradcam.py).
    """
    import keras
    import tensorflow as tf

    from components.train import models

    model = models.load_keras_model(keras_path)
    head = model.get_layer(models.OUTPUT_LAYER)
    grad_model = keras.Model(model.input, [model.get_layer(models.FEATURE_LAYER).output, head.input])
    kernel, bias = (tf.cast(w, tf.float32) for w in head.weights[:2])

    @tf.function
    def maps(pixels):
        with tf.GradientTape() as tape:
            fmap, pooled = grad_model(pixels, training=False)
            fmap = tf.cast(fmap, tf.float32)
            tape.watch(fmap)
            logits = tf.matmul(tf.cast(pooled, tf.float32), kernel) + bias
            chosen = tf.reduce_sum(logits * tf.one_hot(tf.argmax(logits, axis=1), tf.shape(logits)[1]), axis=1)
        grads = tape.gradient(chosen, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        return tf.nn.relu(tf.reduce_sum(fmap * weights[:, None, None, :], axis=-1))

    return maps, int(model.input.shape[1])


def attention_ratio(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """(Grad-CAM mass on the mask / total mass) / (mask area / image area); None without mass or mask."""
    mass, area = float(cam.sum()), float(mask.mean())
    if mass <= 0 or area <= 0:
        return None
    return float(cam[mask].sum()) / mass / area


def attention(keras_path: str | Path, images: Sequence[np.ndarray], limit: int = ATTENTION_IMAGES) -> dict:
    """Median (and 98th percentile) Grad-CAM attention ratio on the leukocytes over a fixed subset of images."""
    import tensorflow as tf

    from components import domain

    maps, size = gradcam_function(keras_path)
    ratios = []
    chosen = attention_subset(len(images), limit)
    for start in range(0, len(chosen), 16):
        batch = [images[i] for i in chosen[start : start + 16]]
        pixels = tf.stack([domain.tf_resize(tf.constant(img, tf.float32) / 255.0, size) for img in batch])
        cams = tf.image.resize(maps(pixels)[..., None], (size, size), method="bilinear")[..., 0].numpy()
        for cam, img in zip(cams, pixels.numpy()):
            ratio = attention_ratio(cam, leukocytes.leukocyte_mask(img))
            if ratio is not None:
                ratios.append(ratio)
    return {
        "images": len(chosen),
        "measured": len(ratios),
        "median_ratio": float(np.median(ratios)) if ratios else None,
        "p98_ratio": float(np.percentile(ratios, 98)) if ratios else None,
    }


def run_probes(run: Run, images: Sequence[np.ndarray], labels: np.ndarray, keras_path: str | Path | None) -> dict:
    """The three probes; attention only where the model has a Keras copy (None otherwise)."""
    result = {
        "leukocytes_removed": leukocytes_removed(run, images, labels),
        "context_swapped": context_swapped(run, images, labels),
        "attention": None,
    }
    if keras_path is not None and Path(keras_path).is_file():
        result["attention"] = attention(keras_path, images)
    return result
