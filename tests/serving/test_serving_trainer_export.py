"""The trainer's real export (components.train.export) loads, warms up and serves through the official stubs."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from fixtures.colour_model import export_colour_model
from fixtures.images import encode_jpeg, encode_png, sample_image
from fixtures.model_base import start_server

pytestmark = pytest.mark.timeout(180)


def test_trainer_export_is_servable(tmp_path):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

    from components.servable import Servable

    version_dir = tmp_path / "leukemia" / "1"
    export_colour_model(version_dir, size=16, warmup_images=[encode_png(sample_image(1, 16))])
    servable = Servable.load(version_dir)
    assert servable.warmup() == 1
    assert servable.signatures["classify"].method_name == "tensorflow/serving/classify"
    assert set(servable.signatures["serving_default"].inputs) == {"images"}

    srv = start_server(tmp_path / "leukemia")
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
