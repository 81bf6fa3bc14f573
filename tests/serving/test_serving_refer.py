"""The referral contract (issue 12) through a live server: GetModelMetadata, gRPC Predict, REST :predict,
Classify, output_filter, the client, and the request log, on a tiny model exported with a fitted calibration.

Version 1 is the calibrated cnn (tests/fixtures/calibrated_model.py, label `stable`); version 2 is the
older tiny export without the referral outputs (label `canary`), whose answers must not change.
"""

from __future__ import annotations

import base64
import json
import shutil
import time

import grpc
import numpy as np
import pytest
import requests
from fixtures.calibrated_model import ood_images, smear_images
from fixtures.images import encode_png
from fixtures.model_base import install_version, models_config, start_server

from components import domain
from components.image_features import FEATURE_OUTPUTS
from pipelines.serve_cli import open_request_log

pytestmark = pytest.mark.timeout(300)

REFER_OUTPUTS = {
    "ood_score": ("DT_FLOAT", [-1]),
    "in_distribution": ("DT_BOOL", [-1]),
    "prediction_set": ("DT_BOOL", [-1, domain.NUM_CLASSES]),
    "refer": ("DT_BOOL", [-1]),
    "leukocyte_fraction": ("DT_FLOAT", [-1]),
    "leukocyte_in_view": ("DT_BOOL", [-1]),
}
IN_DIST = [encode_png(x) for x in smear_images(12, seed=21)[0]]
OOD = [encode_png(x) for x in ood_images(seed=21).values()]


@pytest.fixture(scope="module")
def server(calibrated_export, exported_versions, tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    base = root / "models" / "leukemia"
    base.mkdir(parents=True)
    shutil.copytree(calibrated_export, base / "1")
    install_version(exported_versions, base, 2)
    config = root / "models.config"
    config.write_text(models_config([("leukemia", base, [1, 2], {"stable": 1, "canary": 2})]))
    srv = start_server(
        model_config_file=str(config), request_log_dir=str(root / "requests"), open_request_log=open_request_log
    )
    srv.root = root
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def rest(server):
    return f"http://127.0.0.1:{server.rest_port}"


def predict_request(images, label="stable", signature="serving_default", output_filter=()):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "leukemia"
    req.model_spec.version_label = label
    req.model_spec.signature_name = signature
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    req.output_filter.extend(output_filter)
    return req


def arrays(response) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


@pytest.fixture(scope="module")
def grpc_answer(stub) -> dict[str, np.ndarray]:
    """serving_default over gRPC for the in-distribution images followed by the out-of-distribution ones."""
    return arrays(stub.Predict(predict_request(IN_DIST + OOD), timeout=60))


def test_metadata_shows_the_referral_outputs(stub, rest):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "leukemia"
    req.model_spec.version_label = "stable"
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert stub.GetModelMetadata(req, timeout=30).metadata["signature_def"].Unpack(sdm)
    for name in ("serving_default", "predict_pixels"):
        outputs = sdm.signature_def[name].outputs
        assert set(outputs) == {"probabilities", "label", *REFER_OUTPUTS, *FEATURE_OUTPUTS}
        for output, (dtype, shape) in REFER_OUTPUTS.items():
            assert types_pb2.DataType.Name(outputs[output].dtype) == dtype, output
            assert [d.size for d in outputs[output].tensor_shape.dim] == shape, output
    assert set(sdm.signature_def["classify"].outputs) == {"classes", "scores"}  # TF Serving's Classify: unchanged

    meta = requests.get(f"{rest}/v1/models/leukemia/labels/stable/metadata", timeout=30).json()
    outputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    assert {k: outputs[k]["dtype"] for k in REFER_OUTPUTS} == {k: v[0] for k, v in REFER_OUTPUTS.items()}


def test_grpc_predict_refers_what_the_model_does_not_know(grpc_answer):
    out, n = grpc_answer, len(IN_DIST)
    probabilities = out["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [v.decode() for v in out["label"]] == [domain.CLASS_NAMES[i] for i in probabilities.argmax(axis=1)]
    assert out["ood_score"].dtype == np.float32 and out["ood_score"].shape == (n + len(OOD),)
    assert out["prediction_set"].dtype == np.bool_ and out["prediction_set"].shape == (n + len(OOD), domain.NUM_CLASSES)
    # Every synthetic out-of-distribution image is flagged and referred, with a score far above any smear's.
    assert not out["in_distribution"][n:].any() and out["refer"][n:].all()
    assert out["ood_score"][n:].min() > out["ood_score"][:n].max()
    # Most smears are in distribution with a one-stage set, and those are not referred.
    assert out["in_distribution"][:n].mean() >= 0.75
    single = out["prediction_set"].sum(axis=1) == 1
    assert single[:n].mean() >= 0.6 and not out["refer"][:n].all()
    # the documented rule
    np.testing.assert_array_equal(out["refer"], ~out["in_distribution"] | ~single | ~out["leukocyte_in_view"])
    # A one-class set holds the top class.
    rows = np.flatnonzero(single)
    np.testing.assert_array_equal(out["prediction_set"][rows].argmax(axis=1), probabilities[rows].argmax(axis=1))


def test_output_filter_and_predict_pixels(stub, grpc_answer):
    response = stub.Predict(predict_request(OOD, output_filter=["refer", "ood_score"]), timeout=60)
    assert set(response.outputs) == {"refer", "ood_score"}
    out = arrays(response)
    np.testing.assert_array_equal(out["refer"], grpc_answer["refer"][len(IN_DIST) :])
    np.testing.assert_allclose(out["ood_score"], grpc_answer["ood_score"][len(IN_DIST) :], rtol=1e-4)
    # A client that asks for the probabilities alone gets exactly those.
    only = stub.Predict(predict_request(IN_DIST[:2], output_filter=["probabilities"]), timeout=60)
    assert set(only.outputs) == {"probabilities"}


def test_rest_predict_row_and_columnar_encode_bools_as_json(rest, grpc_answer):
    payload = [{"b64": base64.b64encode(b).decode()} for b in IN_DIST[:2] + OOD[:1]]
    row = requests.post(f"{rest}/v1/models/leukemia/labels/stable:predict", json={"instances": payload}, timeout=60)
    assert row.status_code == 200, row.text
    assert '"refer": true' in row.text  # JSON booleans, as TF Serving writes DT_BOOL
    predictions = row.json()["predictions"]
    expected = [0, 1, len(IN_DIST)]
    for p, i in zip(predictions, expected):
        assert isinstance(p["ood_score"], float) and p["ood_score"] == pytest.approx(
            float(grpc_answer["ood_score"][i]), rel=1e-4
        )
        assert p["in_distribution"] is bool(grpc_answer["in_distribution"][i])
        assert p["refer"] is bool(grpc_answer["refer"][i])
        assert p["prediction_set"] == grpc_answer["prediction_set"][i].tolist()
        assert all(isinstance(v, bool) for v in p["prediction_set"])
        np.testing.assert_allclose(p["probabilities"], grpc_answer["probabilities"][i], atol=1e-5)
    col = requests.post(
        f"{rest}/v1/models/leukemia/labels/stable:predict", json={"inputs": {"images": payload}}, timeout=60
    ).json()["outputs"]
    assert col["refer"] == [bool(grpc_answer["refer"][i]) for i in expected]
    assert col["prediction_set"] == [grpc_answer["prediction_set"][i].tolist() for i in expected]


def test_classify_keeps_its_semantics_with_calibrated_scores(stub, rest, grpc_answer):
    from tensorflow_serving.apis import classification_pb2

    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "leukemia"
    req.model_spec.version_label = "stable"
    req.model_spec.signature_name = "classify"
    for image in IN_DIST[:1] + OOD[:1]:
        req.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(image)
    result = stub.Classify(req, timeout=60).result.classifications
    for row, i in zip(result, (0, len(IN_DIST))):
        assert [c.label for c in row.classes] == list(domain.CLASS_NAMES)
        np.testing.assert_allclose([c.score for c in row.classes], grpc_answer["probabilities"][i], atol=1e-5)
    body = {"signature_name": "classify", "examples": [{"image/encoded": {"b64": base64.b64encode(OOD[0]).decode()}}]}
    answer = requests.post(f"{rest}/v1/models/leukemia/labels/stable:classify", json=body, timeout=60).json()
    assert [c[0] for c in answer["result"][0]] == list(domain.CLASS_NAMES)
    np.testing.assert_allclose(
        [c[1] for c in answer["result"][0]], grpc_answer["probabilities"][len(IN_DIST)], atol=1e-5
    )


def test_client_reads_the_referral_and_older_models_answer_as_before(server, grpc_answer):
    from serving.client import NOT_LIKE_TRAINING, ServingClient

    with ServingClient(target=f"127.0.0.1:{server.grpc_port}") as client:
        calibrated = client.predict(IN_DIST[:3] + OOD, label="stable")
        older = client.predict(IN_DIST[:3], label="canary")
    assert [p.model_version for p in calibrated] == [1] * 6
    for p in calibrated[3:]:
        assert p.refer is True and p.in_distribution is False and p.reason == NOT_LIKE_TRAINING
        assert p.to_dict()["reason"] == NOT_LIKE_TRAINING and p.ood_score > 0
    for p, i in zip(calibrated[:3], range(3)):
        assert p.refer is bool(grpc_answer["refer"][i])
        assert list(p.prediction_set) == [n for n, s in zip(domain.CLASS_NAMES, grpc_answer["prediction_set"][i]) if s]
    for p in older:  # no referral outputs: the same dictionary as before issue 12
        assert p.refer is None and p.reason is None and p.model_version == 2
        assert set(p.to_dict()) == {"label", "confidences", "model_version"}


def test_request_log_records_ood_score_and_refer(server, stub, grpc_answer):
    stub.Predict(
        predict_request(OOD[:1], output_filter=["probabilities"]), timeout=60
    )  # the filter does not starve the log
    log_file = server.root / "requests" / "requests.jsonl"
    wanted = float(grpc_answer["ood_score"][len(IN_DIST)])
    deadline, records = time.time() + 20, []
    while time.time() < deadline:
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        records = [
            r
            for r in map(json.loads, lines)
            if r.get("version") == 1 and r.get("outputs", {}).get("ood_score") == pytest.approx(wanted, rel=1e-4)
        ]
        if len(records) >= 2:  # the fixture's request and the filtered one above
            break
        time.sleep(0.2)
    assert len(records) >= 2, "no request-log record carries the out-of-distribution image's ood_score"
    for record in records:
        assert record["outputs"]["refer"] is True and record["outputs"]["in_distribution"] is False
    older = [r for r in map(json.loads, log_file.read_text().splitlines()) if r.get("version") == 2]
    assert all("outputs" not in r for r in older)
