"""The request-logging proxy through the official TF Serving stubs, in front of a live local server.

The server is `leukoflow serve`'s Server on a model exported by the project's export code; the proxy is
monitoring/proxy.py as the sidecar runs it. Also the drift demo with the proxy in front:
brightened images -> drift on the proxy's log -> exactly one retraining run.
"""

from __future__ import annotations

import hashlib
import json

import grpc
import numpy as np
import pytest
import requests
from fixtures.colour_model import export_colour_model, nearest_centroid
from fixtures.images import encode_png
from fixtures.model_base import start_server
from monitor_smears import TINT, balanced, smear

from components import domain
from components.image_features import FEATURE_OUTPUTS, encoded_image_features

pytestmark = pytest.mark.timeout(300)


def _centroids() -> np.ndarray:
    rng = np.random.default_rng(11)
    return np.array([[smear(c, rng).reshape(-1, 3).mean(axis=0) / 255.0 for _ in range(8)] for c in TINT]).mean(axis=1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A live server (request log off) with the proxy in front, writing its own request log."""
    from monitoring.proxy import LoggingProxy
    from monitoring.request_log import RequestLogWriter

    root = tmp_path_factory.mktemp("proxy")
    export_colour_model(root / "models" / "leukemia" / "1", *nearest_centroid(_centroids()))
    server = start_server(root / "models" / "leukemia")
    writer = RequestLogWriter(root / "log")
    proxy = LoggingProxy(
        f"127.0.0.1:{server.grpc_port}",
        f"127.0.0.1:{server.rest_port}",
        writer,
        host="127.0.0.1",
        grpc_port=0,
        rest_port=0,
    ).start()
    direct = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    via = grpc.insecure_channel(f"127.0.0.1:{proxy.grpc_port}")
    yield {"root": root, "server": server, "proxy": proxy, "writer": writer, "direct": direct, "via": via}
    via.close()
    direct.close()
    proxy.stop()
    server.stop()


def _stubs(channel):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def _predict(images: list[bytes], output_filter=(), name="leukemia"):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    req.output_filter.extend(output_filter)
    return req


def _records(stack) -> list[dict]:
    assert stack["proxy"].flush()
    path = stack["root"] / "log" / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _error(fn, req):
    with pytest.raises(grpc.RpcError) as info:
        fn(req, timeout=30)
    return info.value.code(), info.value.details()


def test_predict_classify_metadata_status_pass_through(stack):
    from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, get_model_status_pb2

    direct, direct_model = _stubs(stack["direct"])
    via, via_model = _stubs(stack["via"])
    images = [encode_png(smear("Pre", np.random.default_rng(i))) for i in range(3)]
    assert via.Predict(_predict(images), timeout=30) == direct.Predict(_predict(images), timeout=30)

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "leukemia"
    classify.model_spec.signature_name = "classify"
    classify.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(images[0])
    assert via.Classify(classify, timeout=30) == direct.Classify(classify, timeout=30)

    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "leukemia"
    assert via.GetModelMetadata(meta, timeout=30) == direct.GetModelMetadata(meta, timeout=30)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "leukemia"
    assert via_model.GetModelStatus(status, timeout=30) == direct_model.GetModelStatus(status, timeout=30)

    # REST passes through too: same status and body.
    body = {"instances": [{"b64": __import__("base64").b64encode(images[0]).decode()}]}
    url = "http://127.0.0.1:{}/v1/models/leukemia:predict"
    a = requests.post(url.format(stack["proxy"].rest_port), json=body, timeout=30)
    b = requests.post(url.format(stack["server"].rest_port), json=body, timeout=30)
    assert a.status_code == b.status_code == 200 and a.json() == b.json()
    missing = requests.get("http://127.0.0.1:{}/v1/models/nope".format(stack["proxy"].rest_port), timeout=30)
    assert missing.status_code == 404


def test_error_codes_and_details_unchanged(stack):
    direct, _ = _stubs(stack["direct"])
    via, _ = _stubs(stack["via"])
    image = encode_png(smear("Early", np.random.default_rng(1)))
    for req in (_predict([image], name="nope"), _predict([image], output_filter=["nope"]), _predict([b"not an image"])):
        got, want = _error(via.Predict, req), _error(direct.Predict, req)
        assert got == want and got[0] != grpc.StatusCode.OK


def test_metadata_and_status_pass_through_a_generic_upstream(tmp_path):
    """Custom metadata both ways and an arbitrary status, against an upstream that echoes them."""
    from concurrent import futures

    from monitoring.proxy import LoggingProxy
    from monitoring.request_log import RequestLogWriter

    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            def handle(body, context):
                sent = dict(context.invocation_metadata())
                context.send_initial_metadata((("x-initial", sent.get("x-client", "")),))
                context.set_trailing_metadata((("x-trailing", "t"),))
                if body == b"fail":
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "upstream says no")
                return details.method.encode() + b"|" + body

            return grpc.unary_unary_rpc_method_handler(handle)

    upstream = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Echo()])
    port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    proxy = LoggingProxy(
        f"127.0.0.1:{port}", None, RequestLogWriter(tmp_path), host="127.0.0.1", grpc_port=0, rest_port=-1
    ).start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{proxy.grpc_port}")
        call = channel.unary_unary("/tensorflow.serving.ModelService/HandleReloadConfigRequest")
        response, info = call.with_call(b"abc", metadata=(("x-client", "c1"),), timeout=10)
        assert response == b"/tensorflow.serving.ModelService/HandleReloadConfigRequest|abc"
        assert ("x-initial", "c1") in info.initial_metadata() and ("x-trailing", "t") in info.trailing_metadata()
        with pytest.raises(grpc.RpcError) as err:
            call(b"fail", timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.details() == "upstream says no"
        assert ("x-trailing", "t") in err.value.trailing_metadata()
        channel.close()
    finally:
        proxy.stop()
        upstream.stop(0)


def test_output_filter_honoured_and_records_equal_the_graph(stack):
    via, direct = _stubs(stack["via"])[0], _stubs(stack["direct"])[0]
    before = len(_records(stack))
    rng = np.random.default_rng(5)
    images = [encode_png(smear(c, rng, size=s)) for c, s in (("Benign", 32), ("Pro", 64))]
    filtered = via.Predict(_predict(images, output_filter=["probabilities"]), timeout=30)
    assert filtered == direct.Predict(_predict(images, output_filter=["probabilities"]), timeout=30)
    assert set(filtered.outputs) == {"probabilities"}  # TF Serving honours it; the proxy never changes a request
    full = via.Predict(_predict(images), timeout=30)
    assert set(full.outputs) == {"probabilities", "label", *FEATURE_OUTPUTS}  # as TF Serving sends them
    records = _records(stack)[before:]
    assert len(records) == 4
    for offset in (0, 2):
        for i, image in enumerate(images):
            record = records[offset + i]
            if offset:  # the plain call: the graph's features, per image
                assert record["features"] == pytest.approx(encoded_image_features(image), abs=1e-4)
            else:  # the filtered call: what it asked for, no features (the drift check skips it)
                assert "features" not in record
            assert record["model"] == "leukemia" and record["version"] == 1
            assert set(record) <= {
                "timestamp",
                "model",
                "version",
                "label",
                "signature",
                "latency_ms",
                "predicted_label",
                "confidences",
                "features",
            }  # no image, no identifier
    probs = np.array([list(records[i]["confidences"].values()) for i in range(2)])
    import tensorflow as tf

    np.testing.assert_allclose(probs, tf.make_ndarray(filtered.outputs["probabilities"]), atol=1e-6)


def _train_split(root, per_class: int = 30):
    from components import records

    rng = np.random.default_rng(100)
    recs = []
    for i, label in enumerate(balanced(4 * per_class)):
        rgb = smear(label, rng)
        encoded = encode_png(rgb)
        recs.append(
            records.make_example(
                hashlib.sha256(encoded).hexdigest(), f"{i}.png", domain.class_index(label), encoded, rgb
            )
        )
    records.write_shards(recs, root / "split" / "train", num_shards=1)
    return root / "split"


@pytest.mark.slow
def test_drift_demo_through_the_proxy_triggers_one_retraining_run(stack, tmp_path, monkeypatch, recording_kfp):
    """The drift demo with the proxy in front: brightened images -> drift on the proxy's log -> one run."""
    from typer.testing import CliRunner

    from components.reference.executor import build_reference
    from monitoring import cli

    version = stack["root"] / "models" / "leukemia" / "1"
    build_reference(_train_split(tmp_path), tmp_path / "reference_features.parquet", saved_model=version)
    via, _ = _stubs(stack["via"])
    log_dir = tmp_path / "window"

    def window(lamp: float, seed: int) -> dict:
        from monitoring.proxy import LoggingProxy
        from monitoring.request_log import RequestLogWriter

        log_dir.mkdir(exist_ok=True)
        for old in log_dir.glob("*"):
            old.unlink()
        # A proxy of its own per window, so the drift check reads exactly these requests.
        proxy = LoggingProxy(
            f"127.0.0.1:{stack['server'].grpc_port}",
            None,
            RequestLogWriter(log_dir),
            host="127.0.0.1",
            grpc_port=0,
            rest_port=-1,
        ).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{proxy.grpc_port}")
        stub, _ = _stubs(channel)
        rng = np.random.default_rng(seed)
        labels = balanced(80)
        for start in range(0, len(labels), 16):
            stub.Predict(
                _predict([encode_png(smear(c, rng, lamp=lamp)) for c in labels[start : start + 16]]), timeout=60
            )
        channel.close()
        proxy.stop()  # writes what is queued
        return {}

    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    package, calls_file = recording_kfp
    args = [
        "drift",
        "--log-dir",
        str(log_dir),
        "--since",
        "1h",
        "--reference",
        str(tmp_path / "reference_features.parquet"),
        "--json",
        "--trigger",
        "--kfp-host",
        "http://kfp:8888",
        "--pipeline-package",
        str(package),
        "--no-workspace",
    ]
    runner = CliRunner()

    window(1.0, seed=200)  # the same lamp: no drift, no run
    same = json.loads(runner.invoke(cli.app, args).stdout.strip().splitlines()[-1])
    assert same["status"] == "no_drift" and same["images"] == 80, same

    window(1.2, seed=200)  # a lamp 20% brighter
    first = runner.invoke(cli.app, args)
    out = json.loads(first.stdout.strip().splitlines()[-1])
    assert first.exit_code == cli.EXIT_DRIFT, first.output
    assert out["status"] == "drift" and out["images"] == 80 and out["trigger"]["triggered"] is True
    assert {"brightness_mean", "background_brightness"} & set(out["drifted_features"])
    second = json.loads(runner.invoke(cli.app, args).stdout.strip().splitlines()[-1])
    assert second["status"] == "drift" and second["trigger"]["triggered"] is False
    runs = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert len([r for r in runs if r["method"] == "run"]) == 1
