"""The client over real gRPC and the official stubs, against a servicer that fails on purpose.

The server here implements the official PredictionServiceServicer / ModelServiceServicer: the first
`fail_first` calls answer UNAVAILABLE, later ones a fixed response. That is the boundary under test
(retries, deadline, TIFF conversion, response parsing); the end-to-end test against `leukoflow serve`
is in test_e2e.py.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from fixtures.images import encode, encode_png
from PIL import Image

from components import domain
from serving.client import ServerUnavailable, ServingClient, ServingError, backoff_delays, prepare_image

PROBS = [0.1, 0.2, 0.6, 0.1]


class FlakyServer:
    """A real gRPC server with the official servicers; fails the first `fail_first` calls with UNAVAILABLE."""

    def __init__(self, fail_first: int = 0, error: grpc.StatusCode | None = None, credentials=None):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.fail_first, self.error = fail_first, error
        self.calls: list[float] = []
        self.received: list = []
        self.lock = threading.Lock()
        outer = self

        class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                outer._gate(context, request)
                return outer._predict_response(request)

            def Classify(self, request, context):
                outer._gate(context, request)
                from tensorflow_serving.apis import classification_pb2

                response = classification_pb2.ClassificationResponse()
                for _ in request.input.example_list.examples:
                    result = response.result.classifications.add()
                    for name, p in zip(domain.CLASS_NAMES, PROBS):
                        result.classes.add(label=name, score=p)
                return response

            def GetModelMetadata(self, request, context):
                outer._gate(context, request)
                from tensorflow.core.protobuf import meta_graph_pb2
                from tensorflow_serving.apis import get_model_metadata_pb2

                sigmap = get_model_metadata_pb2.SignatureDefMap()
                sig = sigmap.signature_def["serving_default"]
                sig.method_name = "tensorflow/serving/predict"
                sig.inputs["images"].CopyFrom(meta_graph_pb2.TensorInfo(name="images:0", dtype=7))
                sig.inputs["images"].tensor_shape.dim.add(size=-1)
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = request.model_spec.name
                response.model_spec.version.value = 3
                response.metadata["signature_def"].Pack(sigmap)
                return response

        class Models(model_service_pb2_grpc.ModelServiceServicer):
            def GetModelStatus(self, request, context):
                outer._gate(context, request)
                from tensorflow_serving.apis import get_model_status_pb2

                response = get_model_status_pb2.GetModelStatusResponse()
                status = response.model_version_status.add(version=3)
                status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
                return response

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.target = f"127.0.0.1:{self.port}"

    def _gate(self, context, request) -> None:
        with self.lock:
            self.calls.append(time.monotonic())
            self.received.append(request)
            n = len(self.calls)
        if n <= self.fail_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if self.error is not None:
            context.abort(self.error, "Servable not found for request: Latest(leukemia)")

    @staticmethod
    def _predict_response(request):
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        n = request.inputs["images"].tensor_shape.dim[0].size
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 3
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n), tensor_shape_pb2.TensorShapeProto.Dim(size=4)]
        )
        response.outputs["probabilities"].CopyFrom(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=PROBS * n)
        )
        return response

    def __enter__(self) -> FlakyServer:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)


def _client(target: str, **kw) -> ServingClient:
    kw.setdefault("initial_backoff_s", 0.02)
    kw.setdefault("max_backoff_s", 0.1)
    return ServingClient(target=target, **kw)


def test_retries_unavailable_then_succeeds():
    with FlakyServer(fail_first=2) as server, _client(server.target, retries=3) as client:
        (prediction,) = client.predict([encode_png(np.zeros((8, 8, 3), np.uint8))], label="stable")
    assert len(server.calls) == 3
    assert prediction.label == "Pre" and prediction.model_version == 3
    assert prediction.confidences == pytest.approx(dict(zip(domain.CLASS_NAMES, PROBS)))
    request = server.received[-1]
    assert request.model_spec.name == "leukemia" and request.model_spec.version_label == "stable"
    assert request.model_spec.signature_name == "serving_default"


def test_backoff_grows_between_attempts():
    with (
        FlakyServer(fail_first=3) as server,
        _client(server.target, retries=3, initial_backoff_s=0.05, max_backoff_s=1) as client,
    ):
        client.status()
    gaps = np.diff(server.calls)
    assert len(gaps) == 3
    assert gaps[0] >= 0.025 and gaps[2] >= 0.1, gaps  # 0.05, 0.1, 0.2 each jittered down by at most half


def test_gives_up_after_bounded_retries():
    with FlakyServer(fail_first=100) as server, _client(server.target, retries=2) as client:
        with pytest.raises(ServerUnavailable, match="after 3 attempt"):
            client.predict([encode_png(np.zeros((8, 8, 3), np.uint8))])
    assert len(server.calls) == 3


def test_deadline_bounds_the_retries():
    with (
        FlakyServer(fail_first=100) as server,
        _client(server.target, retries=50, initial_backoff_s=0.1, max_backoff_s=0.1, deadline_s=0.5) as client,
    ):
        start = time.monotonic()
        with pytest.raises(ServerUnavailable):
            client.status()
        assert time.monotonic() - start < 1.0
    assert 2 <= len(server.calls) < 10


def test_other_errors_are_not_retried():
    with FlakyServer(error=grpc.StatusCode.NOT_FOUND) as server, _client(server.target) as client:
        with pytest.raises(ServingError) as info:
            client.predict([encode_png(np.zeros((8, 8, 3), np.uint8))], version=9)
    assert info.value.code == "NOT_FOUND" and "Latest(leukemia)" in info.value.message
    assert len(server.calls) == 1
    assert server.received[0].model_spec.version.value == 9


def test_tiff_is_sent_as_png_the_server_can_decode():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    with FlakyServer() as server, _client(server.target) as client:
        client.predict([encode(rgb, "TIFF"), encode_png(rgb)])
    sent = list(server.received[0].inputs["images"].string_val)
    assert sent[0].startswith(b"\x89PNG") and sent[1] == encode_png(rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sent[0]))), rgb)


def test_prepare_image_formats():
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    jpeg = encode(rgb, "JPEG")
    assert prepare_image(jpeg) == jpeg  # TF reads it: unchanged
    gray16 = np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000
    tiff16 = encode(gray16, "TIFF")
    assert Image.open(io.BytesIO(tiff16)).mode.startswith("I;16")
    png16 = prepare_image(tiff16)  # 16-bit grayscale TIFF -> RGB PNG
    decoded = np.asarray(Image.open(io.BytesIO(png16)))
    assert decoded.shape == (6, 5, 3) and decoded[..., 0].max() > 200
    with pytest.raises(domain.ImageDecodeError):
        prepare_image(b"this is not an image")
    with pytest.raises(ValueError, match="empty"):
        prepare_image(b"")


def test_classify_status_metadata():
    with FlakyServer() as server, _client(server.target) as client:
        scores = client.classify([encode_png(np.zeros((4, 4, 3), np.uint8))], label="canary")
        status = client.status()
        meta = client.metadata()
    assert scores == [pytest.approx(dict(zip(domain.CLASS_NAMES, PROBS)))]
    assert server.received[0].model_spec.signature_name == "classify"
    example = server.received[0].input.example_list.examples[0]
    assert example.features.feature["image/encoded"].bytes_list.value[0].startswith(b"\x89PNG")
    assert status == [{"version": 3, "state": "AVAILABLE", "error_code": 0, "error_message": ""}]
    assert meta["version"] == 3
    assert meta["signatures"]["serving_default"]["inputs"]["images"] == {"dtype": "DT_STRING", "shape": [-1]}


def test_label_and_version_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        ServingClient().predict([b"\x89PNG\r\n\x1a\n"], label="stable", version=1)


def test_backoff_delays_are_bounded():
    assert backoff_delays(5, 0.1, 0.5, jitter=False) == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert all(0.05 <= d <= 0.5 for d in backoff_delays(5, 0.1, 0.5))
