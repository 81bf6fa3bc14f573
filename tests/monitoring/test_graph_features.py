"""The monitoring features in the exported graph: one definition, the host twin within tolerance, the reference from the graph."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from fixtures.colour_model import SIZE, export_colour_model
from fixtures.images import encode_jpeg, encode_png
from monitor_smears import smear

from components import domain
from components import image_features as graph
from components.host_features import image_features

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    rng = np.random.default_rng(4)
    out = [encode_png(smear(c, rng, size=s)) for c in domain.CLASS_NAMES for s in (32, 224)]
    out += [
        encode_jpeg(smear("Pre", rng, size=300)),
        encode_png(np.full((20, 30, 3), 128, np.uint8)),
    ]  # downscaled; constant
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import tensorflow as tf

    path = export_colour_model(tmp_path_factory.mktemp("monitored") / "leukemia" / "1")
    return path, tf.saved_model.load(str(path))


def test_host_twin_agrees_with_the_graph(images):
    for encoded in images:
        got, want = graph.encoded_image_features(encoded), image_features(domain.load_rgb(encoded))
        for name in graph.FEATURE_NAMES:
            assert abs(got[name] - want[name]) <= graph.FEATURE_TOLERANCE[name], (name, got[name], want[name])


def test_graph_features_see_a_brighter_lamp(images):
    rng = np.random.default_rng(1)
    image = smear("Pre", rng, size=64)
    base = graph.rgb_image_features(image)
    bright = graph.rgb_image_features(np.clip(image * 1.2, 0, 255).astype(np.uint8))
    assert bright["brightness_mean"] > base["brightness_mean"] + 3
    assert bright["background_brightness"] > base["background_brightness"]
    assert 0 < base["foreground_fraction"] < 1


def test_undecodable_bytes_are_a_clear_error():
    with pytest.raises(ValueError, match="cannot decode image"):
        graph.encoded_image_features(b"not an image")


def test_every_predict_signature_returns_the_features(exported, images):
    import tensorflow as tf

    _, loaded = exported
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    for i, encoded in enumerate(images):  # from the full-size image, before the model's resize
        want = graph.encoded_image_features(encoded)
        got = {name: float(out[graph.OUTPUT_PREFIX + name][i]) for name in graph.FEATURE_NAMES}
        assert got == pytest.approx(want, abs=1e-4)
    pixels = np.stack([domain.to_unit_float(smear("Early", np.random.default_rng(i), size=SIZE)) for i in range(3)])
    out = loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))
    for i in range(3):
        want = graph.rgb_image_features((pixels[i] * 255).round().astype(np.uint8))
        got = {name: float(out[graph.OUTPUT_PREFIX + name][i]) for name in graph.FEATURE_NAMES}
        assert got == pytest.approx(want, abs=1e-3)
    # TF Serving's Classify takes one or two outputs: the classify signature stays classes + scores.
    assert set(loaded.signatures["classify"].structured_outputs) == {"classes", "scores"}


def test_reference_from_the_model_equals_reference_from_the_module(exported, tmp_path):
    import pandas as pd

    from components import records
    from components.reference.executor import build_reference

    path, _ = exported
    rng = np.random.default_rng(7)
    recs = []
    for i, label in enumerate(domain.CLASS_NAMES * 3):
        rgb = smear(label, rng, size=48)
        encoded = encode_png(rgb)
        recs.append(
            records.make_example(
                hashlib.sha256(encoded).hexdigest(), f"{i}.png", domain.class_index(label), encoded, rgb
            )
        )
    records.write_shards(recs, tmp_path / "split" / "train", num_shards=1)
    by_module = build_reference(tmp_path / "split", tmp_path / "a.parquet")
    by_model = build_reference(tmp_path / "split", tmp_path / "b.parquet", saved_model=path)
    assert by_model["features_from"] == str(path) and by_module["images"] == 12
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert list(a["label"]) == list(b["label"])
    np.testing.assert_allclose(a[list(graph.FEATURE_NAMES)], b[list(graph.FEATURE_NAMES)], atol=1e-4)
