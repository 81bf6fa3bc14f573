"""The staged rollout on a live server: canary beside stable, shadow calls through the proxy, promote, abort.

Two real exported models (the project's tiny calibrated cnn, trained with two seeds: they disagree on some
images) are served by `leukoflow serve`'s Server from a models.config with labels stable (version 1) and
canary (version 2); the request-logging proxy sits in front with its ShadowSender. Calls go through the
official tensorflow-serving-api stubs.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.calibrated_model import encode_png, export_calibrated, smear_images

from components import home
from components.domain import CLASS_NAMES
from components.promote import registry, rollout
from components.promote.pusher import model_store

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def two_models(calibrated_export, tmp_path_factory) -> dict[int, Path]:
    """Version 1: the session's calibrated cnn (seed 0); version 2: the same recipe trained with seed 1."""
    return {1: calibrated_export, 2: export_calibrated(tmp_path_factory.mktemp("seed1") / "leukemia" / "2", seed=1)}


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """In-distribution smears (both versions mostly agree) and noise (they often do not)."""
    smears = [encode_png(x) for x in smear_images(40, seed=7)[0]]
    rng = np.random.default_rng(3)
    noise = [encode_png(rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)) for _ in range(24)]
    return [im for pair in zip(smears, noise + smears[24:]) for im in pair]


def _register(saved_model: Path, label: str) -> int:
    """A registry version in the model store with `label` (what a promotion leaves behind)."""
    version, _run = registry.create_version(saved_model, {"macro_f1": 0.9}, {}, {"model": "cnn"}, artifacts=[])
    path = model_store.write_version(saved_model, version)
    model_store.move_label(label, version)
    registry.set_version_tags(version, {"status": "promoted", "model_path": str(path)})
    registry.assign_label(version, label)
    return version


def _predict_request(batch: list[bytes], label: str | None = None, version: int | None = None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "leukemia"
    request.model_spec.signature_name = "serving_default"
    if label:
        request.model_spec.version_label = label
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
    return request


def _stub(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _classes(response) -> list[str]:
    from monitoring.request_log import tensor_to_array

    probs = tensor_to_array(response.outputs["probabilities"])
    assert probs.shape[1] == len(CLASS_NAMES)
    return [CLASS_NAMES[i] for i in probs.argmax(axis=1)]


class Stack:
    """Server + proxy (with shadow) on this test's LEUKOFLOW_HOME."""

    def __init__(
        self, tmp: Path, max_pending: int = 64, canary_percent: float | None = None, rest: bool = False
    ) -> None:
        from monitoring.proxy import LoggingProxy
        from monitoring.request_log import RequestLogWriter
        from monitoring.shadow import ShadowSender
        from serving.server import Server, ServerOptions

        self.server = Server(
            ServerOptions(
                port=0,
                rest_api_port=0 if rest else -1,
                model_config_file=str(home.models_config_path()),
                model_config_file_poll_wait_seconds=0.2,
                file_system_poll_wait_seconds=0,
                request_log_dir=None,
            )
        ).start()
        upstream = f"127.0.0.1:{self.server.grpc_port}"
        self.shadow_dir = rollout.shadow_dir(tmp / "requests")
        upstream_rest = f"127.0.0.1:{self.server.rest_port}" if rest else None
        self.sender = ShadowSender(
            upstream, self.shadow_dir, max_pending=max_pending, poll_s=0.2, upstream_rest=upstream_rest
        )
        chooser = None
        if canary_percent is not None:
            from monitoring.label_router import LabelChooser

            chooser = LabelChooser(upstream, canary_percent, poll_s=0.2)
        self.proxy = LoggingProxy(
            upstream,
            upstream_rest,
            RequestLogWriter(tmp / "requests"),
            host="127.0.0.1",
            grpc_port=0,
            rest_port=0,
            shadow=self.sender,
            chooser=chooser,
        ).start()
        self.sender.refresh()
        self.via = grpc.insecure_channel(f"127.0.0.1:{self.proxy.grpc_port}")
        self.direct = grpc.insecure_channel(upstream)

    def close(self) -> None:
        self.via.close()
        self.direct.close()
        self.proxy.stop()
        self.server.stop()


@pytest.fixture
def stack(home, two_models, tmp_path):
    _register(two_models[1], "stable")
    _register(two_models[2], "canary")
    s = Stack(tmp_path)
    yield s
    s.close()


def _send(stack: Stack, images: list[bytes], batch: int = 4, label: str | None = "stable") -> list:
    """Calls with the client's own request id (x-request-id), as a hospital system would send."""
    stub = _stub(stack.via)
    return [
        stub.Predict(
            _predict_request(images[i : i + batch], label=label), timeout=30, metadata=(("x-request-id", f"req-{i}"),)
        )
        for i in range(0, len(images), batch)
    ]


def test_agreement_equals_the_two_models_answers_and_promote_needs_enough(stack, images):
    assert stack.sender.canary_version == 2
    for response in _send(stack, images):
        assert response.model_spec.version.value == 1  # stable answered the live call
    assert stack.proxy.flush(60)
    # The two models' own answers, asked directly by version.
    direct = _stub(stack.direct)
    v1 = _classes(direct.Predict(_predict_request(images, version=1), timeout=30))
    v2 = _classes(direct.Predict(_predict_request(images, version=2), timeout=30))
    expected = sum(a == b for a, b in zip(v1, v2)) / len(images)
    assert 0 < expected < 1, "the two models must disagree on some images (and agree on some)"

    state = rollout.status(stack.shadow_dir)
    summary = state["summary"]
    assert summary["compared"] == len(images) and summary["calls"] == len(images) // 4
    assert summary["agreement"] == pytest.approx(round(expected, 4))
    assert summary["disagreements"] == sum(a != b for a, b in zip(v1, v2))
    for cls in CLASS_NAMES:  # per class of the stable answer
        rows = [(a, b) for a, b in zip(v1, v2) if a == cls]
        want = round(sum(a == b for a, b in rows) / len(rows), 4) if rows else None
        assert summary["per_class"][cls] == {"compared": len(rows), "agreement": want}
    assert summary["referral_rate"]["stable"] is not None and summary["referral_rate"]["canary"] is not None
    assert summary["latency"]["stable"]["p99_ms"] > 0 and summary["latency"]["canary"]["p99_ms"] > 0
    # Each disagreement names the client's request id of the live call, and which image of it.
    want = {(f"req-{4 * (k // 4)}", k % 4) for k, (a, b) in enumerate(zip(v1, v2)) if a != b}
    assert {(d["request_id"], d["index"]) for d in summary["disagreement_list"]} == want

    # Too few compared: refused, naming the figure; nothing moves.
    # (agreement, referral and p99 limits loosened: noise images and a 2-core test machine are not live traffic)
    policy = rollout.RolloutPolicy(
        min_compared=200, min_agreement=round(expected, 4) - 0.1, max_referral_rise=1.0, max_p99_ratio=50.0
    )
    with pytest.raises(rollout.RolloutRefused, match=f"compared requests {len(images)} < 200"):
        rollout.promote(directory=stack.shadow_dir, policy=policy, serving_rest="")
    assert model_store.read_state().labels == {"stable": 1, "canary": 2}

    # Enough: 256 compared images, then the canary becomes stable, with the evidence recorded.
    _send(stack, images * 3)
    assert stack.proxy.flush(60)
    result = rollout.promote(directory=stack.shadow_dir, policy=policy, serving_rest="")
    assert result["version"] == 2 and result["decision"] == "policy"
    assert model_store.read_state().labels == {"stable": 2}
    assert registry.get_aliases() == {"champion": 2}
    tags = registry.get_version(2)["tags"]
    assert tags["shadow.compared"] == str(4 * len(images)) and tags["rollout.decision"] == "policy"
    run = registry.get_version(2)["run_id"]
    c = registry.client()
    out = Path(c.download_artifacts(run, rollout.SUMMARY_ARTIFACT, str(home.home())))
    assert json.loads(out.read_text())["summary"]["compared"] == 4 * len(images)
    card = Path(c.download_artifacts(run, "model_card.md", str(home.home()))).read_text()
    assert "Live shadow comparison" in card and f"{4 * len(images)} live images" in card

    # `leukoflow status` shows the evidence of the stable version.
    from pipelines import status

    collected = status.collect()
    assert collected["rollout"]["stable_evidence"]["compared"] == str(4 * len(images))
    assert "shadow" in status.human(collected)


def test_force_needs_a_reason_and_records_it(stack, images):
    _send(stack, images[:8])
    assert stack.proxy.flush(60)
    with pytest.raises(ValueError, match="--reason"):
        rollout.promote(force=True, directory=stack.shadow_dir, serving_rest="")
    result = rollout.promote(
        force=True, reason="pathologist reviewed the disagreements", directory=stack.shadow_dir, serving_rest=""
    )
    assert result["decision"] == "forced" and "compared requests 8 < 200" in result["failures"]
    tags = registry.get_version(2)["tags"]
    assert tags["rollout.reason"] == "pathologist reviewed the disagreements" and tags["rollout.decision"] == "forced"


def test_overload_drops_shadow_calls_counted_and_no_live_call_fails(home, two_models, tmp_path, images):
    _register(two_models[1], "stable")
    _register(two_models[2], "canary")
    s = Stack(tmp_path, max_pending=1)
    compare = s.sender._compare

    def slow_canary(*args):  # a canary far slower than the live traffic: the shadow queue fills
        time.sleep(0.2)
        compare(*args)

    s.sender._compare = slow_canary
    try:
        stub = _stub(s.via)
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(
                    lambda i: stub.Predict(_predict_request(images[i % 60 : i % 60 + 2], "stable"), timeout=30),
                    range(64),
                )
            )
        assert len(responses) == 64  # every live call answered (an error would have raised)
        assert s.proxy.flush(60)
        assert s.sender.offered == 64 and s.sender.dropped > 0
        assert s.sender.queued + s.sender.dropped == s.sender.offered
        summary = rollout.summarise(rollout.read_records(s.shadow_dir, 2))
        assert summary["dropped"] == s.sender.dropped and summary["calls"] == s.sender.queued
    finally:
        s.close()


def _crashing_model(export_dir: Path) -> Path:
    """A SavedModel whose serving_default fails on every call (a canary that crashes at inference)."""
    import tensorflow as tf

    class Crash(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serving_default(self, images):
            tf.debugging.Assert(tf.equal(tf.size(images), -1), ["canary crashed"])
            return {"probabilities": tf.zeros([tf.size(images), 4])}

    module = Crash()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serving_default})
    return export_dir


@pytest.mark.parametrize("how", ["removed", "crashes"])
def test_canary_removed_or_crashing_changes_nothing_for_stable_clients(home, two_models, tmp_path, images, how):
    _register(two_models[1], "stable")
    canary = two_models[2] if how == "removed" else _crashing_model(tmp_path / "crash")
    _register(canary, "canary")
    s = Stack(tmp_path)
    failures, answered, stop = [], [], threading.Event()

    def client(label):
        stub = _stub(s.via)
        while not stop.is_set():
            try:
                r = stub.Predict(_predict_request(images[:2], label=label), timeout=30)
                answered.append(r.model_spec.version.value)
            except grpc.RpcError as exc:
                failures.append(exc.code())

    try:
        threads = [threading.Thread(target=client, args=(label,)) for label in ("stable", "stable", "stable")]
        for t in threads:
            t.start()
        time.sleep(1.0)
        if how == "removed":
            rollout.abort(s.shadow_dir, reason="test")
            deadline = time.monotonic() + 20
            while s.server.core.manager.labels("leukemia").get("canary") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "canary" not in s.server.core.manager.labels("leukemia")
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == [] and len(answered) > 10 and set(answered) == {1}
        assert s.proxy.flush(60)
        if how == "crashes":
            assert s.sender.failed > 0 and s.sender.compared == 0
        else:
            assert model_store.read_state().labels == {"stable": 1} and model_store.read_state().versions == [1]
            assert "challenger" not in registry.get_aliases()
            assert registry.get_version(2)["tags"]["rollout.decision"] == "aborted"
    finally:
        stop.set()
        s.close()


def test_calls_without_a_label_get_the_newest_version_unless_the_proxy_routes_them(home, two_models, tmp_path, images):
    """TF Serving answers a call naming no label with the newest version (the canary); routing keeps them on stable."""
    _register(two_models[1], "stable")
    _register(two_models[2], "canary")
    plain = Stack(tmp_path / "plain")
    try:
        assert {r.model_spec.version.value for r in _send(plain, images[:16], label=None)} == {2}
    finally:
        plain.close()
    for percent, expected in ((0, {1}), (100, {2})):
        routed = Stack(tmp_path / f"routed{percent}", canary_percent=percent)
        try:
            assert {r.model_spec.version.value for r in _send(routed, images[:16], label=None)} == expected
            assert {r.model_spec.version.value for r in _send(routed, images[:8], label="stable")} == {1}
            assert routed.proxy.flush(60)
            if percent == 0:  # the routed calls are logged and shadowed like relayed ones
                assert rollout.summarise(rollout.read_records(routed.shadow_dir, 2))["compared"] == 24
        finally:
            routed.close()
    routed = Stack(tmp_path / "routed30", canary_percent=30)
    try:
        versions = [r.model_spec.version.value for r in _send(routed, images * 2, batch=1, label=None)]
        share = versions.count(2) / len(versions)
        assert 0.15 < share < 0.45, share  # 128 calls, 30% asked: outside this is far beyond chance
    finally:
        routed.close()


def _write_records(directory: Path, canary: int, n: int, disagree_every: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        rollout.compared_record(
            f"r{i}",
            0,
            "leukemia",
            1,
            canary,
            "Pre",
            "Pro" if disagree_every and i % disagree_every == 0 else "Pre",
            False,
            False,
            5.0,
            6.0,
        )
        for i in range(n)
    ]
    (directory / "shadow.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_a_triggered_runs_canary_moves_to_stable_by_itself_only_when_switched_on(home, models, monkeypatch):
    _register(models["good"], "stable")
    canary = _register(models["good2"], "canary")
    _write_records(rollout.shadow_dir(), canary, 250)
    monkeypatch.setattr(rollout.settings, "ROLLOUT_AUTO_STABLE", False)
    monkeypatch.delenv("LEUKOFLOW_ROLLOUT_AUTO_STABLE", raising=False)
    assert not rollout.maybe_auto_promote()["promoted"]  # off by default
    monkeypatch.setenv("LEUKOFLOW_ROLLOUT_AUTO_STABLE", "1")
    assert "not promoted by a triggered" in rollout.maybe_auto_promote()["why"]  # a manual promotion's canary
    registry.set_version_tags(canary, {"drift_report": "reports/drift/x/report.json"})
    result = rollout.maybe_auto_promote()
    assert result["promoted"] and result["decision"] == "automatic"
    assert model_store.read_state().labels == {"stable": canary}
    assert registry.get_version(canary)["tags"]["rollout.decision"] == "automatic"


def test_the_policy_names_each_failing_figure():
    summary = rollout.summarise(
        [
            rollout.compared_record(f"r{i}", 0, "m", 1, 2, "Pre", "Pre" if i % 10 else "Pro", False, i % 5 == 0, 5, 9)
            for i in range(300)
        ]
    )
    assert summary["agreement"] == 0.9 and summary["referral_rate"] == {"stable": 0.0, "canary": 0.2}
    failures = rollout.RolloutPolicy().failures(summary)
    assert len(failures) == 3, failures
    assert failures[0].startswith("agreement 90.00% < 97%")
    assert failures[1].startswith("referral rate 20.00% is 20.0 points above stable's 0.00%")
    assert failures[2].startswith("p99 9.0 ms is 1.80x stable's 5.0 ms")


def test_rollout_commands_through_the_root_cli(home, models):
    from click.testing import CliRunner

    from pipelines.cli import app

    def run(*args):
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    _register(models["good"], "stable")
    r = run("rollout", "status")
    assert r.exit_code == 0 and "no canary is served (stable: version 1)" in r.output
    canary = _register(models["good2"], "canary")
    _write_records(rollout.shadow_dir(), canary, 120, disagree_every=40)
    r = run("rollout", "status")
    assert r.exit_code == 0, r.output
    assert "compared 120 images" in r.output and "r0 #0: Pre -> Pro" in r.output
    assert "policy: not met: compared requests 120 < 200" in r.output
    r = run("rollout", "status", "--json")
    assert json.loads(r.stdout)["summary"]["disagreements"] == 3
    r = run("rollout", "promote", "--json")
    assert r.exit_code == 1 and "compared requests 120 < 200" in r.output
    assert model_store.read_state().labels == {"stable": 1, "canary": canary}
    r = run("rollout", "abort", "--reason", "too slow to gather evidence", "--json")
    assert r.exit_code == 0, r.output
    assert model_store.read_state().labels == {"stable": 1} and model_store.read_state().versions == [1]
    assert registry.get_version(canary)["tags"]["rollout.reason"] == "too slow to gather evidence"
    r = run("rollout", "abort")
    assert r.exit_code == 1 and "no canary" in r.output


def test_rest_calls_naming_stable_are_compared_too(home, two_models, tmp_path, images):
    import base64

    import requests

    _register(two_models[1], "stable")
    _register(two_models[2], "canary")
    s = Stack(tmp_path, rest=True)
    try:
        batch = images[:12]
        body = {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(b).decode()} for b in batch],
        }
        url = f"http://127.0.0.1:{s.proxy.rest_port}/v1/models/leukemia"
        live = requests.post(f"{url}/labels/stable:predict", json=body, headers={"X-Request-Id": "rest-1"}, timeout=60)
        assert live.status_code == 200
        requests.post(f"{url}:predict", json=body, timeout=60).raise_for_status()  # names no label: not compared
        assert s.proxy.flush(60)
        direct = _stub(s.direct)
        v1 = _classes(direct.Predict(_predict_request(batch, version=1), timeout=30))
        v2 = _classes(direct.Predict(_predict_request(batch, version=2), timeout=30))
        summary = rollout.summarise(rollout.read_records(s.shadow_dir, 2))
        assert summary["compared"] == len(batch) and summary["calls"] == 1
        assert summary["agreement"] == pytest.approx(round(sum(a == b for a, b in zip(v1, v2)) / len(batch), 4))
        assert {d["request_id"] for d in summary["disagreement_list"]} <= {"rest-1"}
        assert summary["referral_rate"]["canary"] is not None
    finally:
        s.close()
