"""The serving SavedModel: signatures as docs/architecture.md says, parity with Keras, every input format, warmup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.images import encode

from components import domain, records


@pytest.fixture(scope="module")
def exported(trained, tiny_split):
    import tensorflow as tf

    from components.train.models import load_keras_model

    saved = Path(trained["saved_model"])
    loaded = tf.saved_model.load(str(saved))
    keras_model = load_keras_model(saved / "assets.extra" / "model.keras")
    examples = list(records.iter_examples(Path(tiny_split) / "test"))
    return {"dir": saved, "loaded": loaded, "keras": keras_model, "examples": examples}


def _keras_features(model, encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(head features, pooled mid-level features) from the Keras copy, decoded as serving decodes."""
    import tensorflow as tf

    from components.train import models

    pixels = np.stack([domain.tf_preprocess_encoded(tf.constant(b), 32).numpy() for b in encoded])
    head, mid = models.calibration_features_model(model)(pixels, training=False)
    return np.asarray(head), np.asarray(mid)


def _keras_probs(model, encoded: list[bytes], temperature: float) -> np.ndarray:
    """The calibrated probabilities the graph should return: softmax(logits / T) of the Keras model."""
    from components.train import calibration, models

    kernel, bias = model.get_layer(models.OUTPUT_LAYER).get_weights()
    return calibration.softmax(_keras_features(model, encoded)[0] @ kernel + bias, temperature)


def test_signatures_match_the_contract(exported):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sigs = exported["loaded"].signatures
    assert set(sigs) == {"serving_default", "predict_pixels", "classify"}
    inputs = sigs["serving_default"].structured_input_signature[1]
    assert inputs["images"].dtype == tf.string and inputs["images"].shape.as_list() == [None]
    outputs = sigs["serving_default"].structured_outputs
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 4]
    assert outputs["label"].dtype == tf.string
    assert sigs["predict_pixels"].structured_input_signature[1]["pixels"].shape.as_list() == [None, 32, 32, 3]
    assert set(sigs["classify"].structured_outputs) == {"classes", "scores"}
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported["dir"] / "saved_model.pb").read_bytes())
    methods = {k: v.method_name for k, v in proto.meta_graphs[0].signature_def.items()}
    assert methods["classify"] == "tensorflow/serving/classify"
    assert methods["serving_default"] == "tensorflow/serving/predict"


def test_saved_model_equals_keras_model(exported):
    import tensorflow as tf

    from components import model_metadata

    encoded = [e["encoded"] for e in exported["examples"]]
    meta = model_metadata.read(exported["dir"])
    expected = _keras_probs(exported["keras"], encoded, meta.temperature)
    uncalibrated = exported["keras"].predict(
        np.stack([domain.tf_preprocess_encoded(tf.constant(b), 32).numpy() for b in encoded]), verbose=0
    )
    assert (expected.argmax(axis=1) == uncalibrated.argmax(axis=1)).all()  # a temperature never changes the class
    out = exported["loaded"].signatures["serving_default"](images=tf.constant(encoded))
    assert np.abs(out["probabilities"].numpy() - expected).max() <= 1e-4
    labels = [s.decode() for s in out["label"].numpy()]
    assert labels == [domain.CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    pixels = np.stack([domain.tf_preprocess_encoded(tf.constant(b), 32).numpy() for b in encoded])
    by_pixels = exported["loaded"].signatures["predict_pixels"](pixels=tf.constant(pixels))["probabilities"].numpy()
    assert np.abs(by_pixels - expected).max() <= 1e-4
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))}
            )
        ).SerializeToString()
        for b in encoded[:3]
    ]
    classified = exported["loaded"].signatures["classify"](inputs=tf.constant(examples))
    assert np.abs(classified["scores"].numpy() - expected[:3]).max() <= 1e-4
    assert [c.decode() for c in classified["classes"].numpy()[0]] == list(domain.CLASS_NAMES)


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    """`rgb` in one of the formats and modes a client may send."""
    if fmt == "png16":
        return encode((rgb.mean(axis=2) * 257).astype(np.uint16), "PNG")
    if fmt in ("gray", "rgba"):
        return encode(rgb, "PNG", mode={"gray": "L", "rgba": "RGBA"}[fmt])
    return encode(rgb, fmt.upper(), **({"lossless": True} if fmt == "webp" else {}))


@pytest.mark.parametrize("fmt", ["png16", "gray", "rgba", "bmp", "gif", "webp", "jpeg"])
def test_serving_decodes_every_format(exported, fmt):
    import tensorflow as tf

    rgb = exported["examples"][0]["pixels"]
    try:
        data = _encode(rgb, fmt)
    except (OSError, KeyError) as exc:  # Pillow built without this encoder
        pytest.skip(f"Pillow cannot encode {fmt}: {exc}")
    out = exported["loaded"].signatures["serving_default"](images=tf.constant([data, data]))
    probs = out["probabilities"].numpy()
    assert probs.shape == (2, 4) and np.isfinite(probs).all()
    from components import model_metadata

    temperature = model_metadata.read(exported["dir"]).temperature
    assert np.abs(probs[0] - _keras_probs(exported["keras"], [data], temperature)[0]).max() <= 1e-4


def test_assets_extra_warmup_and_metadata(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    extra = exported["dir"] / "assets.extra"
    meta = json.loads((extra / "leukoflow.json").read_text())
    assert meta["model"] == "cnn" and meta["image_size"] == 32 and meta["class_names"] == list(domain.CLASS_NAMES)
    assert 0 < meta["low_confidence_threshold"] < 1 and (extra / "model.keras").is_file()
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(extra / "tf_serving_warmup_requests"))
    ]
    assert len(logs) >= 1
    request = logs[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    images = tf.make_ndarray(request.inputs["images"])
    out = exported["loaded"].signatures["serving_default"](images=tf.constant(images))
    assert out["probabilities"].shape == (1, 4)


def test_referral_outputs_follow_the_fitted_calibration(exported, trained, tiny_split):
    """Sets, in_distribution and refer follow the numbers stored in the model's metadata."""
    import tensorflow as tf

    from components import leukocytes, model_metadata

    meta = model_metadata.read(exported["dir"])
    assert meta.temperature and meta.temperature > 0 and meta.ood_threshold is not None
    assert meta.conformal_coverage == trained["calibration"]["coverage"] and 0 <= meta.conformal_quantile <= 1
    encoded = [e["encoded"] for e in exported["examples"]]
    out = exported["loaded"].signatures["serving_default"](images=tf.constant(encoded))
    sets = out["prediction_set"].numpy()
    probs = out["probabilities"].numpy()
    np.testing.assert_array_equal(sets, probs >= 1.0 - meta.conformal_quantile)
    in_dist = out["in_distribution"].numpy()
    np.testing.assert_array_equal(in_dist, out["ood_score"].numpy() <= meta.ood_threshold)
    in_view = out["leukocyte_in_view"].numpy()
    np.testing.assert_array_equal(in_view, out["leukocyte_fraction"].numpy() >= leukocytes.MIN_LEUKOCYTE_FRACTION)
    assert in_view.mean() >= 0.9  # the synthetic smears' dark nuclei are white cells to the segmentation
    np.testing.assert_array_equal(out["refer"].numpy(), ~in_dist | (sets.sum(axis=1) != 1) | ~in_view)
    assert out["ood_score"].numpy().shape == (len(encoded),) and np.isfinite(out["ood_score"].numpy()).all()
    # The threshold is the validation split's 98% quantile: at most one validation image lies above it here.
    val = [e["encoded"] for e in records.iter_examples(Path(tiny_split) / "val")]
    val_scores = exported["loaded"].signatures["serving_default"](images=tf.constant(val))["ood_score"].numpy()
    assert (val_scores > meta.ood_threshold).sum() <= max(1, int(0.02 * len(val)))


def test_unlike_training_images_are_referred(exported):
    """Synthetic out-of-distribution images (noise, black, a saturated green field, stripes) are referred.

    Not a mid-grey flat field: after the background normalisation it is a blank smear background, which the
    tiny model has seen in every training image.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    images += [np.zeros((32, 32, 3), np.uint8), np.tile(np.array([0, 255, 0], np.uint8), (32, 32, 1))]
    images += [np.tile((np.arange(32) % 2 * 255).astype(np.uint8)[:, None, None], (1, 32, 3))]
    encoded = [_encode(img, "png") for img in images]
    out = exported["loaded"].signatures["serving_default"](images=tf.constant(encoded))
    assert out["refer"].numpy().all(), out["ood_score"].numpy()
    assert not out["in_distribution"].numpy().any()
