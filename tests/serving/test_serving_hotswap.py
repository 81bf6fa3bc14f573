"""Hot swap under concurrent load (zero failed requests), version policy, config-file polling and labels."""

from __future__ import annotations

import base64
import threading
import time

import grpc
import pytest
import requests
from fixtures.images import encode_png, sample_image
from fixtures.model_base import install_version, models_config, start_server

pytestmark = pytest.mark.timeout(300)


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def swap_server(exported_versions, tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    base = root / "leukemia"
    install_version(exported_versions, base, 1)
    srv = start_server(base, file_system_poll_wait_seconds=0.2, enable_batching=True)
    srv.base = base
    yield srv
    srv.stop()


def test_hot_swap_under_concurrent_load_has_zero_failures(swap_server, exported_versions):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image = encode_png(sample_image(1))
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "leukemia"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    rest_url = f"http://127.0.0.1:{swap_server.rest_port}/v1/models/leukemia:predict"
    body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
    stop = threading.Event()
    failures: list[str] = []
    seen: list[set] = []
    counts = [0]
    lock = threading.Lock()

    def grpc_client() -> None:
        versions: set[int] = set()
        channel = grpc.insecure_channel(f"127.0.0.1:{swap_server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            try:
                versions.add(stub.Predict(req, timeout=30).model_spec.version.value)
                with lock:
                    counts[0] += 1
            except grpc.RpcError as exc:
                failures.append(f"grpc {exc.code()} {exc.details()}")
        channel.close()
        seen.append(versions)

    def rest_client() -> None:
        session = requests.Session()
        while not stop.is_set():
            r = session.post(rest_url, json=body, timeout=30)
            if r.status_code != 200:
                failures.append(f"rest {r.status_code} {r.text}")
            else:
                with lock:
                    counts[0] += 1

    threads = [threading.Thread(target=grpc_client) for _ in range(3)] + [
        threading.Thread(target=rest_client) for _ in range(2)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        manager = swap_server.core.manager
        install_version(exported_versions, swap_server.base, 2)
        _wait(lambda: manager.loaded_versions("leukemia") == [2], what="version 2 to replace version 1")
        install_version(exported_versions, swap_server.base, 3)
        _wait(lambda: manager.loaded_versions("leukemia") == [3], what="version 3 to replace version 2")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    assert counts[0] > 20
    assert set().union(*seen) >= {1, 3}
    states = dict((v, s.state) for v, s in swap_server.core.manager.status("leukemia"))
    assert states == {3: 30, 2: 50, 1: 50}  # AVAILABLE, END, END (latest policy keeps one version)


def test_partial_version_directory_is_not_loaded(swap_server):
    (swap_server.base / "9").mkdir()  # no saved_model.pb yet: still being written
    time.sleep(0.6)
    assert swap_server.core.manager.loaded_versions("leukemia") == [3]


def test_broken_version_is_reported_and_previous_keeps_serving(swap_server):
    broken = swap_server.base / "10"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    manager = swap_server.core.manager
    _wait(lambda: any(v == 10 and s.state == 50 for v, s in manager.status("leukemia")), what="version 10 to fail")
    (st,) = [s for v, s in manager.status("leukemia", version=10)]
    assert st.error_code != 0 and st.error_message
    assert manager.resolve("leukemia").version == 3


def test_version_whose_warmup_fails_never_takes_traffic(swap_server, exported_versions, tmp_path):
    import shutil

    from fixtures.serving_model import write_warmup

    staged = tmp_path / "11"
    shutil.copytree(exported_versions[1], staged)
    write_warmup(staged, images=[b"not an image"])  # the model loads, its warmup request fails
    staged.rename(swap_server.base / "11")
    manager = swap_server.core.manager
    _wait(lambda: any(v == 11 and s.state == 50 for v, s in manager.status("leukemia")), what="version 11 to fail")
    assert manager.resolve("leukemia").version == 3 and manager.loaded_versions("leukemia") == [3]


def test_config_file_poll_moves_labels(exported_versions, tmp_path):
    """The gate's two-step label move: load both versions, then move `stable` (config file polling)."""

    base = tmp_path / "leukemia"
    for v in (1, 2):
        install_version(exported_versions, base, v)
    config = tmp_path / "models.config"
    config.write_text(models_config([("leukemia", base, [1], {"stable": 1})]))
    srv = start_server(rest_api_port=-1, model_config_file=str(config), model_config_file_poll_wait_seconds=0.2)
    try:
        manager = srv.core.manager
        assert manager.loaded_versions("leukemia") == [1]
        tmp = tmp_path / "models.config.tmp"
        # Step 1: load version 2 beside version 1; step 2: label it.
        tmp.write_text(models_config([("leukemia", base, [1, 2], {"stable": 1})]))
        tmp.rename(config)
        _wait(lambda: manager.loaded_versions("leukemia") == [1, 2], what="version 2 loaded")
        tmp.write_text(models_config([("leukemia", base, [1, 2], {"stable": 1, "canary": 2})]))
        tmp.rename(config)
        _wait(lambda: manager.labels("leukemia").get("canary") == 2, what="canary on version 2")
        assert manager.resolve("leukemia", label="stable").version == 1
        # A label on a version that is not loaded is refused; the old labels stay.
        tmp.write_text(models_config([("leukemia", base, [1, 2], {"stable": 5})]))
        tmp.rename(config)
        time.sleep(0.8)
        assert manager.labels("leukemia") == {"stable": 1, "canary": 2}
        tmp.write_text(models_config([("leukemia", base, [2], {"stable": 2})]))
        tmp.rename(config)
        _wait(lambda: manager.loaded_versions("leukemia") == [2], what="version 1 unloaded")
        assert manager.resolve("leukemia", label="stable").version == 2
    finally:
        srv.stop()


def test_startup_with_label_on_missing_version_fails(exported_versions, tmp_path):
    from serving.errors import ServingError

    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    config = tmp_path / "models.config"
    config.write_text(models_config([("leukemia", base, [1], {"stable": 4})]))
    with pytest.raises(ServingError) as info:
        start_server(rest_api_port=-1, model_config_file=str(config))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_reload_refuses_label_on_version_it_introduces_and_changes_nothing(exported_versions, tmp_path):
    """TF Serving: a label can only move to a version that is already available; a refused config changes nothing."""
    from serving.errors import ServingError
    from serving.manager import ModelManager, entries_from_proto, parse_model_config

    base = tmp_path / "leukemia"
    for v in (1, 2):
        install_version(exported_versions, base, v)
    one = entries_from_proto(parse_model_config(models_config([("leukemia", base, [1], {"stable": 1})])))
    manager = ModelManager(one)
    manager.start()
    both = entries_from_proto(parse_model_config(models_config([("leukemia", base, [1, 2], {"stable": 2})])))
    with pytest.raises(ServingError) as info:
        manager.set_config(both)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert manager.loaded_versions("leukemia") == [1] and manager.labels("leukemia") == {"stable": 1}
    load = entries_from_proto(parse_model_config(models_config([("leukemia", base, [1, 2], {"stable": 1})])))
    manager.set_config(load)  # step 1: version 2 beside version 1
    manager.set_config(both)  # step 2: version 2 is available now
    assert manager.resolve("leukemia", label="stable").version == 2
