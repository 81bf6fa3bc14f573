"""Every RPC and REST endpoint, every error code, and the bad-input corpus, against one live server."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib

import grpc
import numpy as np
import pytest
import requests
from fixtures.images import encode, encode_jpeg, encode_png, sample_image
from fixtures.model_base import MONITORING_CONFIG, install_version, models_config, start_server
from fixtures.serving_model import SIZE

from components.image_features import FEATURE_OUTPUTS
from pipelines.serve_cli import open_request_log

pytestmark = pytest.mark.timeout(300)

MAX_BATCH = 8


@pytest.fixture(scope="module")
def server(exported_versions, tmp_path_factory):
    from serving.limits import Limits

    root = tmp_path_factory.mktemp("api")
    base = root / "models" / "leukemia"
    for v in (1, 2):
        install_version(exported_versions, base, v)
    config = root / "models.config"
    config.write_text(models_config([("leukemia", base, [1, 2], {"stable": 1, "canary": 2})]))
    monitoring = root / "monitoring.config"
    monitoring.write_text(MONITORING_CONFIG)
    srv = start_server(
        model_config_file=str(config),
        monitoring_config_file=str(monitoring),
        request_log_dir=str(root / "requests"),
        limits=Limits(
            max_message_bytes=4 * 1024 * 1024,
            max_image_pixels=10_000_000,
            max_batch_size=MAX_BATCH,
            max_request_pixels=15_000_000,
        ),
        open_request_log=open_request_log,
    )
    srv.root = root
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def rest(server):
    return f"http://127.0.0.1:{server.rest_port}"


def predict_request(
    images: list[bytes] | None = None,
    name="leukemia",
    version=None,
    label=None,
    signature="",
    inputs: dict | None = None,
    output_filter=(),
):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.model_spec.signature_name = signature
    if inputs is None:
        inputs = {
            "images": tf.make_tensor_proto(
                images if images is not None else [encode_png(sample_image(1))], dtype=tf.string
            )
        }
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v)
    req.output_filter.extend(output_filter)
    return req


def probs_of(response) -> np.ndarray:
    import tensorflow as tf

    return tf.make_ndarray(response.outputs["probabilities"])


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def grpc_error(call, *args):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return info.value.code(), info.value.details()


# ---------------------------------------------------------------- images for the corpus


def png16() -> bytes:
    arr = (np.random.default_rng(0).integers(0, 65535, (SIZE, SIZE))).astype(np.uint16)
    return encode(arr, "PNG")  # uint16 -> mode I;16, written as a 16-bit PNG


def huge_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG that decodes to side x side pixels (tiny on disk: all zeros)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    return encode(sample_image(5), fmt, mode=mode)


# ---------------------------------------------------------------- gRPC: every RPC


def test_predict_latest_version_and_labels(stub):
    latest = stub.Predict(predict_request(), timeout=30)
    assert latest.model_spec.name == "leukemia" and latest.model_spec.version.value == 2
    assert latest.model_spec.signature_name == "serving_default"
    p = probs_of(latest)
    assert p.shape == (1, 4) and abs(float(p.sum()) - 1) < 1e-5
    v1 = stub.Predict(predict_request(version=1), timeout=30)
    stable = stub.Predict(predict_request(label="stable"), timeout=30)
    canary = stub.Predict(predict_request(label="canary"), timeout=30)
    assert v1.model_spec.version.value == stable.model_spec.version.value == 1
    assert canary.model_spec.version.value == 2
    np.testing.assert_allclose(probs_of(v1), probs_of(stable))
    assert not np.allclose(probs_of(v1), probs_of(canary))  # two versions really are different models


def test_predict_pixels_signature_and_output_filter(stub):
    import tensorflow as tf

    pixels = tf.make_tensor_proto(np.full((2, SIZE, SIZE, 3), 0.5, np.float32))
    resp = stub.Predict(
        predict_request(signature="predict_pixels", inputs={"pixels": pixels}, output_filter=["label"]), timeout=30
    )
    assert list(resp.outputs) == ["label"]
    assert resp.model_spec.signature_name == "predict_pixels"
    labels = tf.make_ndarray(resp.outputs["label"])
    assert labels.shape == (2,) and labels[0].decode() in ("Benign", "Early", "Pre", "Pro")


def test_classify(stub):
    from tensorflow_serving.apis import classification_pb2

    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "leukemia"
    req.model_spec.signature_name = "classify"
    for seed in (1, 2):
        ex = req.input.example_list.examples.add()
        ex.features.feature["image/encoded"].bytes_list.value.append(encode_png(sample_image(seed)))
    resp = stub.Classify(req, timeout=30)
    assert resp.model_spec.version.value == 2
    assert len(resp.result.classifications) == 2
    classes = resp.result.classifications[0].classes
    assert [c.label for c in classes] == ["Benign", "Early", "Pre", "Pro"]
    assert abs(sum(c.score for c in classes) - 1) < 1e-5
    # Classify on a predict signature: TF Serving's method-name check.
    req.model_spec.signature_name = ""
    code, details = grpc_error(stub.Classify, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        details
        == "Expected classification signature method_name to be tensorflow/serving/classify. Was: tensorflow/serving/predict"
    )
    req.model_spec.signature_name = "nope"
    assert grpc_error(stub.Classify, req) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: nope",
    )


def test_get_model_metadata(stub):
    from tensorflow_serving.apis import get_model_metadata_pb2

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "leukemia"
    req.model_spec.version_label = "stable"
    resp = stub.GetModelMetadata(req, timeout=30)
    assert resp.model_spec.version.value == 1
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sdm)
    assert {"serving_default", "predict_pixels", "classify"} <= set(sdm.signature_def)
    sd = sdm.signature_def["serving_default"]
    assert set(sd.inputs) == {"images"} and set(sd.outputs) == {"probabilities", "label", *FEATURE_OUTPUTS}
    assert sdm.signature_def["classify"].method_name == "tensorflow/serving/classify"
    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["other"])
    bad.model_spec.name = "leukemia"
    assert grpc_error(stub.GetModelMetadata, bad) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field other is not supported",
    )


def test_get_model_status(model_stub):
    from tensorflow_serving.apis import get_model_status_pb2

    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "leukemia"
    resp = model_stub.GetModelStatus(req, timeout=30)
    assert [(s.version, s.state) for s in resp.model_version_status] == [(2, 30), (1, 30)]  # AVAILABLE
    req.model_spec.version.value = 7
    assert grpc_error(model_stub.GetModelStatus, req) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 7 of model leukemia",
    )
    req2 = get_model_status_pb2.GetModelStatusRequest()
    req2.model_spec.name = "nope"
    assert grpc_error(model_stub.GetModelStatus, req2) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )


# ---------------------------------------------------------------- gRPC: error codes


@pytest.mark.parametrize(
    "kwargs, code, message",
    [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ({"version": 99}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(leukemia, 99)"),
        ({"label": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: x"),
        ({"signature": "x"}, grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "x" not found.'),
        ({"output_filter": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT, None),
    ],
)
def test_grpc_error_codes(stub, kwargs, code, message):
    got_code, details = grpc_error(stub.Predict, predict_request(**kwargs))
    assert got_code == code
    if message:
        assert details == message
    assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 2


def test_unimplemented_regress(stub):
    from tensorflow_serving.apis import regression_pb2

    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "leukemia"
    assert grpc_error(stub.Regress, req)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_message_size_limit(stub):
    code, _ = grpc_error(stub.Predict, predict_request([b"\x00" * (5 * 1024 * 1024)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------- bad-input corpus


def _tensor(values, dtype=None):
    import tensorflow as tf

    return tf.make_tensor_proto(values, dtype=dtype)


ACCEPTED = {
    "png": lambda: encode_png(sample_image(3)),
    "png16": png16,
    "jpeg_cmyk": lambda: encode_jpeg(sample_image(4), "CMYK"),
    "jpeg_gray": lambda: encoded("JPEG", "L"),
    "png_rgba": lambda: encoded("PNG", "RGBA"),
    "bmp": lambda: encoded("BMP"),
    "gif": lambda: encoded("GIF", "P"),
    "webp": lambda: encoded("WEBP"),
}


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_accepted_formats(stub, kind):
    p = probs_of(stub.Predict(predict_request([ACCEPTED[kind]()]), timeout=30))
    assert p.shape == (1, 4) and np.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-5


def _bad_corpus():
    jpeg = encode_jpeg(sample_image(6))
    return {
        "empty_bytes": ({"images": lambda: _tensor([b""])}, "", "input images[0] is empty"),
        "text": ({"images": lambda: _tensor([b"hello, I am not an image"])}, "", "input images[0] is not an image"),
        "truncated_jpeg": (
            {"images": lambda: _tensor([jpeg[: len(jpeg) // 2]])},
            "",
            "input images[0] cannot be decoded",
        ),
        "tiff": ({"images": lambda: _tensor([encoded("TIFF")])}, "", "input images[0] is TIFF"),
        "huge_png": ({"images": lambda: _tensor([huge_png()])}, "", "max_image_pixels"),
        "request_pixels": ({"images": lambda: _tensor([huge_png(3000)] * 2)}, "", "max_request_pixels"),
        "bad_second_image": ({"images": lambda: _tensor([encode_png(sample_image(1)), b"xx"])}, "", "input images[1]"),
        "wrong_dtype": ({"images": lambda: _tensor(np.zeros((1,), np.float32))}, "", "input 'images' must be string"),
        "wrong_shape": (
            {"pixels": lambda: _tensor(np.zeros((1, SIZE - 1, SIZE, 3), np.float32))},
            "predict_pixels",
            "shape",
        ),
        "wrong_rank": ({"images": lambda: _tensor([[encode_png(sample_image(1))]])}, "", "shape"),
        "predict_on_classify_bad_example": (
            {"inputs": lambda: _tensor([b"\x00garbage"])},
            "classify",
            "input examples[0]",
        ),
        "wrong_input_name": (
            {"imgs": lambda: _tensor([encode_png(sample_image(1))])},
            "",
            "input tensor alias not found",
        ),
        "empty_batch": (
            {"images": lambda: _tensor(np.array([], dtype=object).astype(bytes), dtype=None)},
            "",
            "empty batch",
        ),
        "oversized_batch": (
            {"images": lambda: _tensor([encode_png(sample_image(1))] * (MAX_BATCH + 1))},
            "",
            "max_batch_size",
        ),
    }


BAD = _bad_corpus()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_invalid_argument_and_server_keeps_serving(stub, case):
    import tensorflow as tf

    inputs, signature, fragment = BAD[case]
    built = {k: f() for k, f in inputs.items()}
    if case == "empty_batch":
        built = {"images": tf.make_tensor_proto(np.zeros((0,), dtype=object), dtype=tf.string, shape=[0])}
    code, details = grpc_error(stub.Predict, predict_request(inputs=built, signature=signature))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert fragment in details
    assert probs_of(stub.Predict(predict_request(), timeout=30)).shape == (1, 4)


# ---------------------------------------------------------------- REST


def test_rest_status_and_metadata(rest):
    r = requests.get(f"{rest}/v1/models/leukemia", timeout=30)
    assert r.status_code == 200
    statuses = r.json()["model_version_status"]
    assert [s["version"] for s in statuses] == ["2", "1"]
    assert statuses[0]["state"] == "AVAILABLE" and statuses[0]["status"]["error_code"] == "OK"
    r = requests.get(f"{rest}/v1/models/leukemia/versions/1", timeout=30)
    assert [s["version"] for s in r.json()["model_version_status"]] == ["1"]
    r = requests.get(f"{rest}/v1/models/leukemia/labels/canary", timeout=30)
    assert [s["version"] for s in r.json()["model_version_status"]] == ["2"]
    meta = requests.get(f"{rest}/v1/models/leukemia/labels/stable/metadata", timeout=30).json()
    assert meta["model_spec"]["name"] == "leukemia" and meta["model_spec"]["version"] == "1"
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_STRING"
    assert sig["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar(rest):
    img = b64(encode_png(sample_image(1)))
    row = requests.post(f"{rest}/v1/models/leukemia:predict", json={"instances": [img, img]}, timeout=30)
    assert row.status_code == 200, row.text
    preds = row.json()["predictions"]
    assert len(preds) == 2 and set(preds[0]) == {"probabilities", "label", *FEATURE_OUTPUTS}
    assert abs(sum(preds[0]["probabilities"]) - 1) < 1e-5
    named = requests.post(
        f"{rest}/v1/models/leukemia/versions/1:predict", json={"instances": [{"images": img}]}, timeout=30
    )
    assert named.status_code == 200
    col = requests.post(
        f"{rest}/v1/models/leukemia/labels/stable:predict", json={"inputs": {"images": [img]}}, timeout=30
    )
    outputs = col.json()["outputs"]
    np.testing.assert_allclose(outputs["probabilities"][0], named.json()["predictions"][0]["probabilities"], rtol=1e-6)
    pixels = requests.post(
        f"{rest}/v1/models/leukemia:predict",
        json={"signature_name": "predict_pixels", "inputs": np.full((1, SIZE, SIZE, 3), 0.5).tolist()},
        timeout=30,
    )
    assert pixels.status_code == 200 and len(pixels.json()["outputs"]["probabilities"][0]) == 4


def test_rest_classify(rest):
    body = {"signature_name": "classify", "examples": [{"image/encoded": b64(encode_png(sample_image(2)))}]}
    r = requests.post(f"{rest}/v1/models/leukemia:classify", json=body, timeout=30)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert [c for c, _ in result[0]] == ["Benign", "Early", "Pre", "Pro"]


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/leukemia/versions/9:predict", {"instances": [1]}, 404, "Specific(leukemia, 9)"),
        (
            "POST",
            "/v1/models/leukemia/labels/x:predict",
            {"instances": [1]},
            400,
            "Unrecognized servable version label: x",
        ),
        (
            "POST",
            "/v1/models/leukemia:predict",
            {"signature_name": "x", "instances": [1]},
            400,
            'Serving signature name: "x" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/leukemia:predict",
            {"instances": [{"b64": base64.b64encode(b"text").decode()}]},
            400,
            "images[0]",
        ),
        ("POST", "/v1/models/leukemia:predict", {"instances": []}, 400, "empty batch"),
        ("POST", "/v1/models/leukemia:predict", {"instances": [1.5]}, 400, "expects a string"),
        ("POST", "/v1/models/leukemia:predict", {"nothing": 1}, 400, "Missing 'inputs' or 'instances' key"),
        ("POST", "/v1/models/leukemia:predict", "not json", 400, "JSON Parse error"),
        ("POST", "/v1/models/leukemia:regress", {"examples": []}, 501, "Regress"),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/leukemia/versions/5", None, 404, "Could not find version 5 of model leukemia"),
        ("GET", "/v1/models/leukemia/labels/x/metadata", None, 400, "Unrecognized servable version label: x"),
        ("GET", "/v1/foo/bar", None, 400, "Malformed request: GET /v1/foo/bar"),
    ],
)
def test_rest_errors(rest, method, path, body, status, fragment):
    data = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
    r = requests.request(method, rest + path, data=data, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert requests.get(f"{rest}/v1/models/leukemia", timeout=30).status_code == 200


def test_rest_oversized_batch_and_body(rest):
    img = b64(encode_png(sample_image(1)))
    r = requests.post(f"{rest}/v1/models/leukemia:predict", json={"instances": [img] * (MAX_BATCH + 1)}, timeout=30)
    assert r.status_code == 400 and "max_batch_size" in r.json()["error"]
    r = requests.post(f"{rest}/v1/models/leukemia:predict", data=b"x" * (5 * 1024 * 1024), timeout=30)
    assert r.status_code == 400 and "max_message_bytes" in r.json()["error"]


def test_rest_hostile_bodies_keep_the_connection_usable(rest):
    session = requests.Session()
    deep = "[" * 100000 + "]" * 100000
    r = session.post(f"{rest}/v1/models/leukemia:predict", data='{"instances": ' + deep + "}", timeout=30)
    assert r.status_code == 400
    r = session.post(f"{rest}/v1/models/leukemia:predict", json={"instances": [[[{"b64": "!!notbase64"}]]]}, timeout=30)
    assert r.status_code == 400 and "base64" in r.json()["error"]
    r = session.get(f"{rest}/v1/models/leukemia", data=b'{"a": 1}', timeout=30)  # a GET with a body
    assert r.status_code == 200
    assert session.get(f"{rest}/v1/models/leukemia", timeout=30).status_code == 200  # same keep-alive connection


def test_classify_oversized_batch(stub):
    from tensorflow_serving.apis import classification_pb2

    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "leukemia"
    req.model_spec.signature_name = "classify"
    for _ in range(MAX_BATCH + 1):
        req.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(b"x")
    code, details = grpc_error(stub.Classify, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in details


def test_prometheus_metrics_and_request_log(server, rest, stub):
    stub.Predict(predict_request(), timeout=30)
    text = requests.get(f"{rest}/monitoring/prometheus/metrics", timeout=30).text
    assert 'leukoflow_serving_requests_total{api="grpc_predict",code="OK",model="leukemia",version="2"}' in text
    assert 'leukoflow_serving_errors_total{code="NOT_FOUND",model="nope",version=""}' in text
    assert "leukoflow_serving_request_latency_seconds_bucket" in text
    assert 'leukoflow_serving_loaded_versions{model="leukemia",version="1"} 1.0' in text
    assert "leukoflow_serving_batch_size_bucket" in text
    from components.image_features import encoded_image_features

    # The log's features are the graph's outputs for the very image sent (copied, not recomputed).
    distinct = encode_png(np.full((40, 56, 3), (200, 60, 120), np.uint8))
    stub.Predict(predict_request([distinct]), timeout=30)
    expected = encoded_image_features(distinct)
    log_file = server.root / "requests" / "requests.jsonl"
    deadline, record = time.time() + 20, None
    while time.time() < deadline and record is None:
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        record = next(
            (r for r in map(json.loads, lines) if r.get("features") == pytest.approx(expected, abs=1e-4)), None
        )
        time.sleep(0.2)
    assert record is not None, "no request-log record carries the sent image's features"
    assert record["model"] == "leukemia" and record["predicted_label"] in ("Benign", "Early", "Pre", "Pro")
    assert set(record["confidences"]) == {"Benign", "Early", "Pre", "Pro"}
    assert "image_b64" not in record


def test_a_path_neither_api_nor_page_is_404_naming_it(rest):
    r = requests.get(f"{rest}/no-such-page-xyz", timeout=30)
    assert r.status_code == 404
    assert "/no-such-page-xyz" in r.json()["error"]


# ---------------------------------------------------------------- reload config (last: it changes labels)


def test_handle_reload_config(server, model_stub, stub):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2

    base = server.root / "models" / "leukemia"
    req = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config([("leukemia", base, [1, 2], {"stable": 2, "canary": 1})]), req.config)
    resp = model_stub.HandleReloadConfigRequest(req, timeout=60)
    assert resp.status.error_code == 0
    assert stub.Predict(predict_request(label="stable"), timeout=30).model_spec.version.value == 2
    bad = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config([("leukemia", base, [1, 2], {"stable": 3})]), bad.config)
    code, details = grpc_error(model_stub.HandleReloadConfigRequest, bad)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == (
        "Request to assign label to version 3 of model leukemia, which is not currently available for inference"
    )
    assert stub.Predict(predict_request(label="stable"), timeout=30).model_spec.version.value == 2  # old labels kept
