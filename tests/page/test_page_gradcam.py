"""Grad-CAM on the served version's Keras model: shapes, consistency with serving, focus, bad input."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fixtures.images import encode_png
from fixtures.quadrant_model import SIZE, build_model, export, quadrant_images
from PIL import Image

from serving.page import gradcam


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb, without the memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_heatmap_shapes_and_overlay(quadrant_model_dir):
    explainer = gradcam.load_explainer(quadrant_model_dir)
    x, _ = quadrant_images(1, seed=3)
    result = gradcam.explain(explainer, encode_png(x[0]))
    heat = result["heatmap"]
    assert heat["grid_shape"] == [SIZE // 2, SIZE // 2]  # the feature_map layer's grid
    grid = np.array(heat["grid"])
    assert grid.shape == (SIZE // 2, SIZE // 2) and grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    assert heat["raw_max"] > 0
    overlay = _png(result["overlay_png_b64"])
    assert overlay.shape == (SIZE, SIZE, 3) and overlay.dtype == np.uint8
    assert _png(result["heatmap_png_b64"]).shape == (SIZE, SIZE, 3)
    assert not np.array_equal(overlay, (x[0] * 255).round().astype(np.uint8))  # the heatmap is drawn on it
    assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert result["class_name"] == ("Benign", "Early", "Pre", "Pro")[result["class_index"]]


def test_probabilities_match_the_served_signature(quadrant_model_dir):
    """The explanation explains the prediction the server makes: same decode, same model."""
    from components.servable import Servable

    servable = Servable.load(quadrant_model_dir)
    x, _ = quadrant_images(3, seed=4)
    images = [encode_png(img) for img in x]
    served = servable.run("serving_default", {"images": np.array(images, dtype=object)})["probabilities"]
    explainer = gradcam.load_explainer(quadrant_model_dir)
    for encoded, probs in zip(images, served):
        result = gradcam.explain(explainer, encoded)
        np.testing.assert_allclose(result["probabilities"], probs, atol=1e-5)
        assert result["class_index"] == int(np.argmax(probs))


def test_heatmap_focuses_on_the_informative_quadrant(quadrant_model_dir):
    """The class signal is only a patch in the top-left quadrant; the heat must be there too."""
    explainer = gradcam.load_explainer(quadrant_model_dir)
    x, y = quadrant_images(8, seed=11)
    shares = []
    for img, label in zip(x, y):
        result = gradcam.explain(explainer, encode_png(img))
        assert result["class_index"] == label  # the model learned the patch
        grid = np.array(result["heatmap"]["grid"])
        half = grid.shape[0] // 2
        shares.append(grid[:half, :half].sum() / grid.sum())
        peak_y, peak_x = result["heatmap"]["peak"]
        assert peak_y < 0.5 and peak_x < 0.5, f"peak at {result['heatmap']['peak']} is outside the top-left quadrant"
    assert np.mean(shares) > 0.45  # a uniform map would give 0.25


def test_explaining_another_class_and_a_non_square_image(quadrant_model_dir):
    explainer = gradcam.load_explainer(quadrant_model_dir)
    wide = np.full((40, 100, 3), 0.5, dtype=np.float32)
    wide[5:15, 5:15] = [0.1, 0.9, 0.1]
    result = gradcam.explain(explainer, encode_png(wide), class_index=3)
    assert result["class_index"] == 3 and result["class_name"] == "Pro"
    assert result["image_shape"] == [40, 100] and result["overlay_shape"] == [40, 100]
    big = np.zeros((600, 1200, 3), dtype=np.float32)
    result = gradcam.explain(explainer, encode_png(big), max_side=300)
    assert result["overlay_shape"] == [150, 300]
    assert _png(result["overlay_png_b64"]).shape == (150, 300, 3)
    with pytest.raises(gradcam.ExplainError, match="out of range"):
        gradcam.explain(explainer, encode_png(wide), class_index=7)


def test_bad_bytes_are_refused_readably(quadrant_model_dir):
    explainer = gradcam.load_explainer(quadrant_model_dir)
    with pytest.raises(gradcam.ExplainError, match="not an image") as err:
        gradcam.explain(explainer, b"hello, this is a text file\n")
    assert err.value.status == 400 and "Traceback" not in str(err.value)
    with pytest.raises(gradcam.ExplainError, match="empty"):
        gradcam.explain(explainer, b"")
    with pytest.raises(gradcam.ExplainError, match="max_image_pixels=1000000"):
        gradcam.check_image_size(png_header_only(20000, 20000), 1_000_000)
    gradcam.check_image_size(encode_png(np.zeros((8, 8, 3))), 1_000_000)  # small: accepted
    gradcam.check_image_size(b"not an image", 1_000_000)  # left to the decoder's message


def test_loaded_once_per_version_and_clear_errors(quadrant_model_dir, tmp_path):
    assert gradcam.load_explainer(quadrant_model_dir) is gradcam.load_explainer(str(quadrant_model_dir) + "/")
    bare = tmp_path / "leukemia" / "2"
    bare.mkdir(parents=True)
    with pytest.raises(gradcam.ExplainError, match="no Keras model") as err:
        gradcam.load_explainer(bare)
    assert err.value.status == 501

    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs)))
    nameless = tmp_path / "leukemia" / "3"
    export(keras.Model(inputs, outputs), nameless)
    with pytest.raises(gradcam.ExplainError, match="feature_map"):
        gradcam.load_explainer(nameless)


def test_probability_output_without_softmax_head(tmp_path):
    """A model whose last layer is not a softmax Dense: gradients of log-probability are used."""
    import keras

    base = build_model(seed=1)
    outputs = keras.layers.Activation("linear", name="probabilities_out")(base.output)
    version = export(keras.Model(base.inputs, outputs), tmp_path / "leukemia" / "4")
    explainer = gradcam.load_explainer(version)
    assert not explainer.scores_are_logits
    x, _ = quadrant_images(1, seed=2)
    result = gradcam.explain(explainer, encode_png(x[0]))
    assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert np.array(result["heatmap"]["grid"]).shape == (SIZE // 2, SIZE // 2)


@pytest.mark.slow
def test_models_built_and_exported_by_the_training_step(tmp_path, name="cnn", brightness="mean"):
    """The trainer's own builders and export (custom layers, nested backbone) explain like the served signature."""
    from components.servable import Servable
    from components.settings import ModelConfig
    from components.train.export import export_saved_model
    from components.train.models import build_model as build_trained

    model = build_trained(ModelConfig(name, image_size=SIZE, weights="none", brightness=brightness))
    keras_path = tmp_path / "model.keras"
    model.save(keras_path)
    version = export_saved_model(
        model,
        tmp_path / "leukemia" / "5",
        model_name=name,
        image_size=SIZE,
        brightness=brightness,
        keras_path=keras_path,
    )
    x, _ = quadrant_images(2, seed=6)
    images = [encode_png(img) for img in x]
    served = Servable.load(version).run("serving_default", {"images": np.array(images, dtype=object)})["probabilities"]
    explainer = gradcam.load_explainer(version)
    assert explainer.head is not None  # the softmax Dense head: Grad-CAM on its logits
    for encoded, probs in zip(images, served):
        result = gradcam.explain(explainer, encoded)
        np.testing.assert_allclose(result["probabilities"], probs, atol=1e-5)
        assert np.isfinite(np.array(result["heatmap"]["grid"])).all()


def test_preload_and_concurrent_requests_share_one_load(tmp_path):
    import threading

    version = export(build_model(seed=5), tmp_path / "leukemia" / "6")
    gradcam.preload(version)
    got = []
    threads = [threading.Thread(target=lambda: got.append(gradcam.load_explainer(version))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(e is got[0] for e in got)
    assert gradcam.load_explainer(version) is got[0]
    gradcam.preload(tmp_path / "missing")  # nothing to load: no error, no thread left behind
