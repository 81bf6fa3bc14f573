"""Grad-CAM for the served version: where the model looked when it chose a class.

The heatmap comes from the served version's own Keras model (`assets.extra/model.keras`,
a layer named `feature_map` on the last conv feature map), loaded once per version and
cached. The uploaded bytes are decoded and resized by `components.domain`, the same
graph ops the exported serving signature uses, so the explanation sees the image the
prediction saw. The Keras model's input contract is float32 [size, size, 3] in [0, 1]
(any brightness adjustment and backbone normalisation live inside the model).
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components import domain, model_metadata

FEATURE_LAYER = "feature_map"
MODEL_FILE = Path("assets.extra") / "model.keras"
DISPLAY_MAX_SIDE = 512  # the overlay is sent back at most this large (the page shows it small)
DEFAULT_ALPHA = 0.5
CACHE_SIZE = 4  # versions kept in memory: stable, canary and a swap in flight


class ExplainError(ValueError):
    """An explanation could not be made; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Explainer:
    """One version's Keras model wired for Grad-CAM."""

    version_dir: str
    grad_model: Any  # keras.Model: image -> (feature map, class scores)
    scores_are_logits: bool  # False: scores are probabilities and log() is taken
    head: Any  # the final Dense layer when its softmax is applied here, else None
    image_size: int
    class_names: tuple[str, ...]
    lock: threading.Lock
    num_classes: int = 0
    step: Any = None  # compiled (image, class or -1) -> (feature map, gradients, probabilities, class)


def _build(version_dir: str) -> Explainer:
    """Load the Keras model of one version and build the (feature map, scores) model."""
    import keras

    path = Path(version_dir) / MODEL_FILE
    if not path.is_file():
        raise ExplainError(f"this model version has no Keras model for explanations ({path} is missing)", 501)
    try:  # the trainer's custom layers (brightness, normalisation) must be registered before loading
        from components.train.models import load_keras_model
    except ImportError:  # pragma: no cover - a server image without the training code
        model = keras.saving.load_model(path, compile=False)
    else:
        model = load_keras_model(path)
    try:
        feature = model.get_layer(FEATURE_LAYER)
    except ValueError:
        raise ExplainError(f"the model in {path} has no layer named {FEATURE_LAYER!r}", 501) from None

    # Grad-CAM wants the class score before softmax: softmax saturates near 1 and its
    # gradients vanish, which would blank the heatmap for confident predictions.
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    head = None
    if isinstance(last, keras.layers.Dense) and activation == "softmax":
        scores, logits, head = last.input, True, last
    elif isinstance(last, keras.layers.Activation) and activation == "softmax":
        scores, logits = last.input, True
    elif isinstance(last, keras.layers.Softmax):
        scores, logits = last.input, True
    else:
        out = model.outputs[0]
        scores, logits = out, False
    grad_model = keras.Model(model.inputs, [feature.output, scores])

    meta = model_metadata.read_or_none(version_dir)
    shape = model.inputs[0].shape
    size = int(shape[1] or (meta.image_size if meta else domain.IMAGE_SIZE))  # the graph's own input size wins
    names = meta.class_names if meta else domain.CLASS_NAMES
    explainer = Explainer(
        str(version_dir),
        grad_model,
        logits,
        head,
        size,
        names,
        threading.Lock(),
        num_classes=int(model.outputs[0].shape[-1]),
    )
    explainer.step = _compile_step(explainer)
    return explainer


def _compile_step(explainer: Explainer) -> Any:
    """The forward pass and its gradients as one tf.function (traced once; eager is ~5x slower)."""
    import tensorflow as tf

    size = explainer.image_size

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32), tf.TensorSpec([], tf.int32)])
    def step(pixels, wanted):
        with tf.GradientTape() as tape:
            fmap, scores = explainer.grad_model(pixels, training=False)
            tape.watch(fmap)
            scores = tf.cast(scores, tf.float32)  # mixed-precision models compute in float16
            if explainer.head is not None:  # features -> logits with the head's own weights
                scores = tf.matmul(scores, tf.cast(explainer.head.kernel, tf.float32))
                if explainer.head.bias is not None:
                    scores = scores + tf.cast(explainer.head.bias, tf.float32)
            probs = tf.nn.softmax(scores) if explainer.scores_are_logits else scores
            index = tf.where(wanted >= 0, wanted, tf.cast(tf.argmax(probs[0]), tf.int32))
            chosen = tf.gather(scores, index, axis=1)
            target = chosen if explainer.scores_are_logits else tf.math.log(chosen + 1e-9)
        grads = tape.gradient(target, fmap)
        return tf.cast(fmap, tf.float32), tf.cast(grads, tf.float32), probs, index

    return step


_CACHE: OrderedDict[str, Explainer] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}  # one load at a time per version; other versions never wait


def _cached(key: str) -> Explainer | None:
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    return None


def load_explainer(version_dir: str | Path) -> Explainer:
    """The cached explainer of a version directory (versions are never overwritten, so the path is the key)."""
    key = str(Path(version_dir).resolve())
    if (hit := _cached(key)) is not None:
        return hit
    with _CACHE_LOCK:
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # a second request for the same version waits for the first load instead of repeating it
        if (hit := _cached(key)) is not None:
            return hit
        explainer = _build(key)
        with _CACHE_LOCK:
            _CACHE[key] = explainer
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
            _KEY_LOCKS.pop(key, None)
    return explainer


def preload(version_dir: str | Path) -> None:
    """Start loading a version's explainer in the background (the page asks before the first heatmap)."""
    key = str(Path(version_dir).resolve())
    with _CACHE_LOCK:
        if key in _CACHE or key in _KEY_LOCKS or not (Path(key) / MODEL_FILE).is_file():
            return
        _KEY_LOCKS[key] = threading.Lock()

    def load() -> None:
        try:
            explainer = load_explainer(key)
            import tensorflow as tf

            size = explainer.image_size  # trace the compiled step now, not on the first request
            explainer.step(tf.zeros([1, size, size, 3]), tf.constant(-1, tf.int32))
        except Exception:  # noqa: BLE001 - the explain request itself will report it
            with _CACHE_LOCK:
                _KEY_LOCKS.pop(key, None)

    threading.Thread(target=load, name="gradcam-preload", daemon=True).start()


def check_image_size(encoded: bytes, max_pixels: int) -> int:
    """Refuse a decompression bomb from its header, before anything is decoded; returns the pixels (0: unreadable)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit; Pillow would only warn
    try:
        with Image.open(io.BytesIO(encoded)) as img:
            width, height = img.size
    except Exception:  # not something Pillow reads: the graph decoder will say what is wrong
        return 0
    if width * height > max_pixels:
        raise ExplainError(
            f"image is {width}x{height} = {width * height} pixels, more than the limit max_image_pixels={max_pixels}"
        )
    return width * height


def _decode(encoded: bytes) -> Any:
    """Bytes -> float32 [H, W, 3] in [0, 1] with the domain's graph decoder."""
    import tensorflow as tf

    if not encoded:
        raise ExplainError("the image is empty (0 bytes)")
    try:
        return domain.tf_decode(tf.constant(encoded))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
        message = getattr(exc, "message", str(exc)).strip().splitlines()[0]
        raise ExplainError(f"not an image that can be decoded (JPEG, PNG, BMP, GIF or WebP): {message}") from None


def _colormap(heat: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] float RGB (matplotlib's perceptual 'turbo')."""
    from matplotlib import colormaps

    return colormaps["turbo"](heat)[..., :3]


def _foreground(rgb: np.ndarray) -> np.ndarray:
    """The most strongly stained regions (white cells and their nuclei in Wright-Giemsa smears).

    Saturation splits a smear into three populations: pale background, lightly stained red
    cells, and the deeply stained leukocytes. The top class of a 3-level multi-Otsu on
    saturation keeps the last; a plain Otsu split is the fallback for flat images.
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    try:
        return saturation > threshold_multiotsu(saturation, classes=3)[1]
    except ValueError:  # too few distinct values for three classes
        try:
            return saturation > threshold_otsu(saturation)
        except ValueError:  # a constant image
            return np.zeros(saturation.shape, dtype=bool)


def _png_b64(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def explain(
    explainer: Explainer,
    encoded: bytes,
    class_index: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    max_side: int = DISPLAY_MAX_SIDE,
) -> dict:
    """Grad-CAM of one encoded image for `class_index` (default: the predicted class)."""
    import tensorflow as tf

    image = _decode(encoded)
    model_input = domain.tf_resize(image, explainer.image_size)[None]
    if class_index is not None and not 0 <= int(class_index) < explainer.num_classes:
        raise ExplainError(f"class index {class_index} is out of range for {explainer.num_classes} classes")
    wanted = tf.constant(-1 if class_index is None else int(class_index), tf.int32)
    with explainer.lock:  # one gradient pass at a time per model: bounded memory under concurrent requests
        fmap, grads, probs, index = explainer.step(model_input, wanted)
    index = int(index)

    # Channel weights = spatially averaged gradients; ReLU keeps what speaks for the class.
    weights = tf.reduce_mean(grads, axis=(1, 2))  # [1, C]
    cam = tf.nn.relu(tf.reduce_sum(fmap * weights[:, None, None, :], axis=-1))[0].numpy()  # [h, w]
    raw_max = float(cam.max())
    norm = cam / raw_max if raw_max > 0 else np.zeros_like(cam)

    # Show it over the uploaded image (not the square model input), at most max_side wide.
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, max_side / max(height, width))
    shown_h, shown_w = max(1, round(height * scale)), max(1, round(width * scale))
    shown = tf.image.resize(image, (shown_h, shown_w), antialias=True).numpy().clip(0, 1)
    heat = tf.image.resize(norm[..., None], (shown_h, shown_w), method="bilinear").numpy()[..., 0].clip(0, 1)
    # Cool regions keep most of the image visible; hot ones take the colour.
    weight = (alpha * (0.3 + 0.7 * heat))[..., None]
    overlay = shown * (1.0 - weight) + _colormap(heat) * weight

    fg = _foreground(shown)
    mass = float(heat.sum())
    peak = np.unravel_index(int(np.argmax(norm)), norm.shape)
    probabilities = [float(p) for p in probs[0].numpy()]
    return {
        "class_index": index,
        "class_name": explainer.class_names[index] if index < len(explainer.class_names) else str(index),
        "probabilities": probabilities,
        "overlay_png_b64": _png_b64(overlay),
        "heatmap_png_b64": _png_b64(_colormap(heat)),
        "heatmap": {
            "grid": np.round(norm, 4).tolist(),  # normalised [h, w] on the feature map's grid
            "grid_shape": list(norm.shape),
            "raw_max": raw_max,
            "mean": float(norm.mean()),
            # peak position as fractions of height and width (0,0 = top-left)
            "peak": [(peak[0] + 0.5) / norm.shape[0], (peak[1] + 0.5) / norm.shape[1]],
            # share of the heat on strongly stained cells vs the share of the image they cover
            "cell_attention": (float(heat[fg].sum()) / mass) if mass > 0 and fg.any() else None,
            "cell_area": float(fg.mean()),
        },
        "image_shape": [height, width],
        "overlay_shape": [shown_h, shown_w],
    }
