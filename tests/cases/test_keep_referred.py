"""Opt-in keeping of referred images: only referred ones, content-addressed, limited in size and age,
filed under the request id the request log also carries, and labelled into the case store by that id."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fixtures.calibrated_model import encode_png, ood_images, smear_images
from fixtures.model_base import serve_refusal

from components.cases import referred, store
from tests.cases.conftest import render_jpeg

pytestmark = pytest.mark.timeout(300)

IN_DIST = [encode_png(x) for x in smear_images(6, seed=31)[0]]
OOD = [encode_png(x) for x in ood_images(seed=31).values()]


def _predict(port: int, images: list[bytes]) -> dict[str, np.ndarray]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "leukemia"
    req.model_spec.signature_name = "serving_default"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=60)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _serve(root, calibrated_export, keep: bool):
    from pipelines.serve_cli import open_request_log
    from serving.server import Server, ServerOptions

    base = root / "models" / "leukemia"
    base.mkdir(parents=True)
    shutil.copytree(calibrated_export, base / "1")
    return Server(
        ServerOptions(
            port=0,
            rest_api_port=-1,
            model_name="leukemia",
            model_base_path=str(base),
            file_system_poll_wait_seconds=0,
            request_log_dir=str(root / "requests"),
            keep_referred_images=str(root / "referred") if keep else None,
        ),
        open_request_log=open_request_log,
    ).start()


def test_server_keeps_only_referred_images_under_the_logged_request_id(calibrated_export, tmp_path, base_data):
    server = _serve(tmp_path, calibrated_export, keep=True)
    try:
        images = IN_DIST + OOD
        answer = _predict(server.grpc_port, images)
        assert server.core.referral_keeper.flush() and server.core.request_logger.flush()
    finally:
        server.stop()
    refer = answer["refer"].astype(bool)
    assert refer[len(IN_DIST) :].all()  # the noise images are referred; the test needs both kinds
    kept = referred.ReferredImages(tmp_path / "referred").entries()
    wanted = {hashlib.sha256(images[i]).hexdigest() for i in np.flatnonzero(refer)}
    assert {e["sha256"] for e in kept} == wanted and len(kept) == int(refer.sum())
    for entry in kept:
        assert entry["path"].name.startswith(entry["sha256"]) and entry["path"].read_bytes() in images
        assert entry["ood_score"] is not None and isinstance(entry["prediction_set"], list)
    assert oct((tmp_path / "referred").stat().st_mode & 0o777) == "0o700"

    logged = [json.loads(line) for line in (tmp_path / "requests" / "requests.jsonl").read_text().splitlines()]
    by_id = {r["request_id"]: r for r in logged}
    assert len(by_id) == len(images)  # every image has its own id in the log
    for entry in kept:  # the kept copy and the log record share the id, and the log has what the queue ranks by
        record = by_id[entry["request_id"]]
        assert record["outputs"]["refer"] is True
        assert record["outputs"]["ood_score"] == pytest.approx(entry["ood_score"])
        assert len(record["outputs"]["prediction_set"]) == 4

    # A pathologist labels one kept referral by its request id.
    entry = kept[0]
    case = store.Candidate(entry["path"], "Pro", referred.SERVED_SITE, "dr-a", source_request_id=entry["request_id"])
    result = store.add_cases([case], tmp_path / "cases", store.base_index(base_data))
    assert result["counts"]["added"] == 1, result
    assert store.read_ledger(tmp_path / "cases")["source_request_id"][0] == entry["request_id"]


def test_keeping_is_off_by_default(calibrated_export, tmp_path):
    server = _serve(tmp_path, calibrated_export, keep=False)
    try:
        _predict(server.grpc_port, OOD)
        assert server.core.referral_keeper is None
    finally:
        server.stop()
    assert not (tmp_path / "referred").exists()


def test_cases_add_by_request_id(tmp_path, base_data, monkeypatch):
    import subprocess
    import sys

    kept = referred.ReferredImages(tmp_path / "referred")
    kept.keep(render_jpeg("Early", 41), {"request_id": "abc123", "ood_score": 9.0, "prediction_set": ["Early", "Pre"]})
    common = ["--kept-dir", str(tmp_path / "referred"), "--cases-dir", str(tmp_path / "cases")]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "cases",
            "add",
            "--request-id",
            "abc123",
            "--label",
            "early",
            "--reviewer",
            "dr-b",
            "--data-dir",
            str(base_data),
            "--json",
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["added"] == 1
    ledger = store.read_ledger(tmp_path / "cases")
    assert ledger.loc[0, ["label", "site", "reviewer", "source_request_id"]].tolist() == [
        "Early",
        "served",
        "dr-b",
        "abc123",
    ]
    missing = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "cases", "add", "--request-id", "nope", "--label", "Pre", *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1 and "no kept referred image for request id 'nope'" in missing.stderr


def test_size_and_age_limits(tmp_path):
    blobs = [render_jpeg("Pre", 50 + k) for k in range(4)]
    # Room for the three newest images, not for all four.
    kept = referred.ReferredImages(tmp_path, max_bytes=sum(map(len, blobs[1:])), max_age=timedelta(days=2))
    now = datetime.now(UTC)
    for k, blob in enumerate(blobs):
        sha = kept.keep(blob, {"request_id": f"r{k}"}, now=now)
        os.utime(next((tmp_path / "images").glob(f"{sha}*")), (time.time() - 100 + k, time.time() - 100 + k))
    total = sum(p.stat().st_size for p in (tmp_path / "images").iterdir())
    assert total <= kept.max_bytes
    ids = [e["request_id"] for e in kept.entries()]
    assert "r3" in ids and "r0" not in ids  # the oldest went first
    again = kept.keep(blobs[3], {"request_id": "r4"}, now=now)  # same content: one file, a second index line
    assert len(list((tmp_path / "images").glob(f"{again}*"))) == 1 and {"r3", "r4"} <= {
        e["request_id"] for e in kept.entries()
    }
    for path in (tmp_path / "images").iterdir():  # three days later every image is past the age limit
        os.utime(path, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    assert kept.prune()["expired"] >= 1
    assert kept.entries() == [] and not list((tmp_path / "images").iterdir())
    with pytest.raises(ValueError, match="size limit"):
        referred.ReferredImages(tmp_path, max_bytes=0)


def test_serve_flags_reach_the_keeper_and_bad_limits_are_clear(calibrated_export, tmp_path):
    """`leukoflow serve --keep_referred_images` with a zero size limit refuses to start and says why."""
    done = serve_refusal(
        calibrated_export,
        tmp_path,
        "--rest_api_port=-1",
        f"--keep_referred_images={tmp_path / 'kept'}",
        "--keep_referred_max_mb=0",
    )
    assert done.returncode == 1 and "the size limit must be positive" in done.stderr
