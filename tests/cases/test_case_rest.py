"""POST /v1/cases on a live server: a pathologist's label lands through the same case store as `cases add`
(added, already a case, conflict, quarantined), with :predict's limits and errors, and off by default.
A :predict answer carries its request id in X-Request-Id, so the label can name the answer it confirms."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request

import pandas as pd
import pytest
from fixtures.calibrated_model import encode_png, ood_images
from fixtures.model_base import serve_refusal, start_server

from components.cases import store
from serving.limits import Limits
from tests.cases.conftest import render_jpeg

pytestmark = pytest.mark.timeout(300)

MAX_MESSAGE_BYTES = 256 * 1024
MAX_IMAGE_PIXELS = 100 * 100


def _server(root, calibrated_export, **options):
    base = root / "models" / "leukemia"
    base.mkdir(parents=True)
    shutil.copytree(calibrated_export, base / "1")
    limits = Limits(max_message_bytes=MAX_MESSAGE_BYTES, max_image_pixels=MAX_IMAGE_PIXELS)
    return start_server(base, limits=limits, **options)


def _post(port: int, path: str, payload: dict | bytes, method: str = "POST") -> tuple[int, dict, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data if method == "POST" else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def _b64(image: bytes) -> dict:
    return {"b64": base64.b64encode(image).decode()}


def _case(image: bytes, label: str, **fields) -> dict:
    return {"image": _b64(image), "label": label, "site": "lab-b", "reviewer": "dr-a", **fields}


@pytest.fixture(scope="module")
def cases_server(calibrated_export, base_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cases-rest")
    server = _server(
        root,
        calibrated_export,
        cases_dir=str(root / "cases"),
        cases_base_data=str(base_data),
        keep_referred_images=str(root / "referred"),
    )
    yield server, root / "cases"
    server.stop()


def test_predict_answers_its_request_id_and_the_label_lands_in_the_ledger(cases_server):
    server, cases = cases_server
    image = render_jpeg("Early", 61)
    status, headers, answer = _post(server.rest_port, "/v1/models/leukemia:predict", {"instances": [_b64(image)]})
    assert status == 200 and set(answer) == {"predictions"}  # the TF Serving body is unchanged
    request_id = headers["X-Request-Id"]
    assert len(request_id) == 32

    status, _, added = _post(server.rest_port, "/v1/cases", _case(image, "early", request_id=request_id))
    assert status == 200, added
    assert added["outcome"] == "added" and added["label"] == "Early" and added["request_id"] == request_id
    ledger = store.read_ledger(cases)
    row = ledger[ledger["sha256"] == added["sha256"]].iloc[0]
    assert (row["label"], row["site"], row["reviewer"], row["source_request_id"], row["status"]) == (
        "Early",
        "lab-b",
        "dr-a",
        request_id,
        "ok",
    )
    assert (cases / row["path"]).read_bytes() == image

    # The same image with the same label again: one case.
    status, _, again = _post(server.rest_port, "/v1/cases", _case(image, "Early"))
    assert status == 200 and again["outcome"] == "already_a_case", again
    assert (store.read_ledger(cases)["sha256"] == added["sha256"]).sum() == 1

    # The same image with another label: a conflict, kept out of training.
    status, _, conflict = _post(server.rest_port, "/v1/cases", _case(image, "Pre", reviewer="dr-b"))
    assert status == 200 and conflict["outcome"] == "conflict", conflict
    assert "Early by dr-a" in conflict["with"]
    row = store.read_ledger(cases).set_index("sha256").loc[added["sha256"]]
    assert row["status"] == "conflict" and row["path"].startswith("conflicts/")


def test_grpc_predict_answers_its_request_id_in_trailing_metadata(cases_server):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    server, _ = cases_server
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "leukemia"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([render_jpeg("Pre", 66)], dtype=tf.string))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        _, call = stub.Predict.with_call(request, timeout=60)
    trailing = dict(call.trailing_metadata())
    assert len(trailing["x-request-id"]) == 32


def test_a_corrupt_image_is_quarantined_with_the_reason(cases_server):
    server, cases = cases_server
    whole = render_jpeg("Pro", 62)
    truncated = whole[: len(whole) // 2]  # a readable header (so :predict's limits pass), a broken body
    status, _, answer = _post(server.rest_port, "/v1/cases", _case(truncated, "Pro", filename="C:\\scans\\s17.jpg"))
    assert status == 200, answer
    assert answer["outcome"] == "quarantined" and answer["reason"].startswith("not a readable image (")
    quarantine = pd.read_csv(cases / "quarantine" / store.QUARANTINE_CSV, dtype=str, keep_default_na=False)
    assert quarantine.iloc[-1]["file"] == "s17.jpg" and quarantine.iloc[-1]["reviewer"] == "dr-a"
    assert not (store.read_ledger(cases)["label"] == "Pro").any()


def test_bad_requests_name_the_field_and_the_limit(cases_server):
    server, _ = cases_server
    port = server.rest_port
    image = render_jpeg("Benign", 63)

    status, _, answer = _post(port, "/v1/cases", _case(image, "Blast"))
    assert status == 400 and answer["error"] == "\"label\": unknown class 'Blast'; use one of Benign, Early, Pre, Pro"
    status, _, answer = _post(port, "/v1/cases", {"image": _b64(image), "label": "Pre", "reviewer": "dr-a"})
    assert status == 400 and answer["error"] == '"site" is required'
    status, _, answer = _post(port, "/v1/cases", _case(image, "Pre", site="../etc"))
    assert status == 400 and answer["error"].startswith("\"site\": site name '../etc' is not usable")
    status, _, answer = _post(port, "/v1/cases", _case(image, "Pre", reviewer=""))
    assert status == 400 and answer["error"] == '"reviewer" is required'
    status, _, answer = _post(port, "/v1/cases", {**_case(image, "Pre"), "image": {"b64": "not base64!"}})
    assert status == 400 and answer["error"] == '"image": the b64 value is not valid base64'
    status, _, answer = _post(port, "/v1/cases", {**_case(image, "Pre"), "patient": "x"})
    assert status == 400 and answer["error"].startswith("unknown field(s) patient")
    status, _, answer = _post(port, "/v1/cases", b"{not json")
    assert status == 400 and answer["error"].startswith("JSON Parse error")
    status, _, answer = _post(port, "/v1/cases", _case(b"plain text, not an image", "Pre"))
    assert status == 400 and "input image[0] is not an image in a supported format" in answer["error"]
    # :predict's limits: pixels per image from the header, and the body size before it is read.
    big = encode_png(ood_images(seed=5, size=128)["noise"])
    status, _, answer = _post(port, "/v1/cases", _case(big, "Pre"))
    assert status == 400 and f"max_image_pixels={MAX_IMAGE_PIXELS}" in answer["error"], answer
    status, _, answer = _post(port, "/v1/cases", _case(b"\xff" * MAX_MESSAGE_BYTES, "Pre"))
    assert status == 400 and f"max_message_bytes={MAX_MESSAGE_BYTES}" in answer["error"]
    status, _, answer = _post(port, "/v1/cases", {}, method="GET")
    assert status == 405 and "use POST" in answer["error"]


def test_a_kept_referral_is_labelled_by_its_request_id_alone(cases_server):
    server, cases = cases_server
    noise = encode_png(ood_images(seed=64)["noise"])
    status, headers, answer = _post(server.rest_port, "/v1/models/leukemia:predict", {"instances": [_b64(noise)]})
    assert status == 200 and answer["predictions"][0]["refer"] is True
    assert server.core.referral_keeper.flush()
    request_id = headers["X-Request-Id"]
    label = {"request_id": request_id, "label": "Benign", "site": "lab-b", "reviewer": "dr-a"}
    status, _, added = _post(server.rest_port, "/v1/cases", label)
    assert status == 200 and added["outcome"] == "added", added
    ledger = store.read_ledger(cases).set_index("sha256")
    assert ledger.loc[added["sha256"], "source_request_id"] == request_id
    assert (cases / ledger.loc[added["sha256"], "path"]).read_bytes() == noise  # the kept copy, not a re-upload
    status, _, missing = _post(server.rest_port, "/v1/cases", {**label, "request_id": "no-such-id"})
    assert status == 404 and "no kept referred image for request id 'no-such-id'" in missing["error"]


def test_case_capture_is_off_by_default(calibrated_export, tmp_path):
    server = _server(tmp_path, calibrated_export)
    try:
        status, headers, answer = _post(server.rest_port, "/v1/cases", _case(render_jpeg("Pre", 65), "Pre"))
        info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/ui/model", timeout=60).read())
    finally:
        server.stop()
    assert status == 404 and "start it with --cases_dir DIR" in answer["error"]
    assert info["cases"] is False
    assert not (tmp_path / "cases").exists()


def test_serve_refuses_cases_without_the_base_data(calibrated_export, tmp_path):
    """`leukoflow serve --cases_dir` needs the base data cases are deduplicated against, and says so."""
    done = serve_refusal(
        calibrated_export,
        tmp_path,
        "--rest_api_port=0",
        f"--cases_dir={tmp_path / 'cases'}",
        f"--cases_base_data={tmp_path / 'no-data'}",
    )
    assert done.returncode == 1, done.stdout
    assert f"--cases_dir needs the base data to deduplicate cases against: {tmp_path / 'no-data'} is not a folder" in (
        done.stderr + done.stdout
    )
