"""The trainer's real export (components.train.export) loads, warms up and serves through the official stubs."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from tiny_model import encode_jpeg, encode_png, sample_image

pytestmark = pytest.mark.timeout(180)


def test_trainer_export_is_servable(tmp_path):
    import grpc
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

    from components.servable import Servable
    from components.train.export import export_saved_model
    from serving.server import Server, ServerOptions

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    version_dir = tmp_path / "leukemia" / "1"
    export_saved_model(
        model,
        version_dir,
        model_name="tiny",
        image_size=16,
        brightness="none",
        warmup_images=[encode_png(sample_image(1, 16))],
    )
    servable = Servable.load(version_dir)
    assert servable.warmup() == 1
    assert servable.signatures["classify"].method_name == "tensorflow/serving/classify"
    assert set(servable.signatures["serving_default"].inputs) == {"images"}

    srv = Server(
        ServerOptions(
            port=0,
            rest_api_port=0,
            model_name="leukemia",
            model_base_path=str(tmp_path / "leukemia"),
            file_system_poll_wait_seconds=0,
            request_log_dir=None,
        )
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "leukemia"
            req.inputs["images"].CopyFrom(
                tf.make_tensor_proto([encode_jpeg(sample_image(2, 40), "CMYK")], dtype=tf.string)
            )
            probs = tf.make_ndarray(stub.Predict(req, timeout=30).outputs["probabilities"])
            assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 1e-5
            creq = classification_pb2.ClassificationRequest()
            creq.model_spec.name = "leukemia"
            creq.model_spec.signature_name = "classify"
            creq.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(
                encode_png(sample_image(3, 20))
            )
            classes = stub.Classify(creq, timeout=30).result.classifications[0].classes
            np.testing.assert_allclose(sum(c.score for c in classes), 1, rtol=1e-5)
        body = {"instances": [{"b64": base64.b64encode(encode_png(sample_image(4, 24))).decode()}]}
        r = requests.post(f"http://127.0.0.1:{srv.rest_port}/v1/models/leukemia:predict", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("Benign", "Early", "Pre", "Pro")
    finally:
        srv.stop()
