"""End to end: the client, `leukoflow predict` and the hospital example against `leukoflow serve`'s server.

The server reads the production templates (serving/models.config with its base path pointed at a tiny
exported model, serving/batching.config, serving/monitoring.config), so the checked-in configs are the
ones proven to serve.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from fixtures.images import encode
from fixtures.serving_model import export_tiny_model
from google.protobuf import text_format
from typer.testing import CliRunner

from components import domain, settings
from components.home import REPO_ROOT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tensorflow_serving.config import model_server_config_pb2

    from serving.server import Server, ServerOptions

    root = tmp_path_factory.mktemp("e2e")
    base = root / "models" / settings.SERVED_MODEL_NAME
    base.mkdir(parents=True)
    export_tiny_model(base / "1")
    config = text_format.Parse(
        (REPO_ROOT / "serving/models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    config.model_config_list.config[0].base_path = str(base)
    (root / "models.config").write_text(text_format.MessageToString(config))
    options = ServerOptions(
        port=0,
        rest_api_port=0,
        model_config_file=str(root / "models.config"),
        enable_batching=True,
        batching_parameters_file=str(REPO_ROOT / "serving/batching.config"),
        monitoring_config_file=str(REPO_ROOT / "serving/monitoring.config"),
    )
    running = Server(options).start()
    yield running
    running.stop()


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_client_rpcs(server):
    from serving.client import ServingClient, ServingError

    with ServingClient(target=f"127.0.0.1:{server.grpc_port}") as client:
        jpeg, tiff = encode(_rgb(0), "JPEG"), encode(_rgb(1), "TIFF")
        predictions = client.predict([jpeg, tiff], label="stable")
        assert [p.model_version for p in predictions] == [1, 1]
        for p in predictions:
            assert list(p.confidences) == list(domain.CLASS_NAMES)
            assert sum(p.confidences.values()) == pytest.approx(1.0, abs=1e-5)
            assert p.label == max(p.confidences, key=p.confidences.get)
        # TIFF converted client-side gives what the PNG of the same pixels gives.
        (as_png,) = client.predict([encode(_rgb(1), "PNG")], version=1)
        assert as_png.confidences == pytest.approx(predictions[1].confidences, abs=1e-6)
        scores = client.classify([jpeg])
        assert scores[0] == pytest.approx(predictions[0].confidences, abs=1e-5)
        assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": 0, "error_message": ""}]
        meta = client.metadata()
        assert meta["version"] == 1
        assert meta["signatures"]["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"
        with pytest.raises(ServingError) as info:
            client.predict([jpeg], label="nope")
        assert info.value.code == "INVALID_ARGUMENT"


def test_predict_cli_and_hospital_example(server, tmp_path, capsys):
    from serving.predict import app

    image = tmp_path / "smear.jpg"
    image.write_bytes(encode(_rgb(2), "JPEG"))
    target = f"127.0.0.1:{server.grpc_port}"
    result = CliRunner().invoke(app, [str(image), "--server", target, "--label", "stable", "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)["predictions"][0]

    spec = importlib.util.spec_from_file_location("hospital_client_e2e", REPO_ROOT / "examples/hospital_client.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    capsys.readouterr()
    assert example.main([str(image), "--server", target, "--json"]) == 0
    hospital = json.loads(capsys.readouterr().out)["predictions"][0]
    assert hospital["label"] == cli["label"]
    assert hospital["confidences"] == pytest.approx(cli["confidences"], abs=1e-4)


def test_rest_status_path_of_the_probes(server):
    """The Deployment's probe path answers 200 with an AVAILABLE version, as in TF Serving."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.rest_port}/v1/models/{settings.SERVED_MODEL_NAME}", timeout=10
    ) as r:
        body = json.loads(r.read())
    assert r.status == 200
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics", timeout=10) as r:
        assert r.status == 200


def _post(port: int, path: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_calls_from_the_operations_doc(server):
    """The curl bodies docs/operations.md shows: b64 instances on a label path, and classify over examples."""
    import base64

    b64 = base64.b64encode(encode(_rgb(3), "JPEG")).decode()
    status, body = _post(server.rest_port, "/v1/models/leukemia/labels/stable:predict", {"instances": [{"b64": b64}]})
    assert status == 200, body
    (row,) = body["predictions"]
    assert len(row["probabilities"]) == 4 and row["label"] in domain.CLASS_NAMES
    status, body = _post(
        server.rest_port,
        "/v1/models/leukemia:classify",
        {"signature_name": "classify", "examples": [{"image/encoded": {"b64": b64}}]},
    )
    assert status == 200, body
    assert [label for label, _ in body["result"][0]] == list(domain.CLASS_NAMES)
    status, body = _post(server.rest_port, "/v1/models/leukemia/labels/nope:predict", {"instances": [{"b64": b64}]})
    assert status in (400, 404) and "error" in body
