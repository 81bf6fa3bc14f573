"""Model store and models.config: atomic versions, the two-step label move, crash safety."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components import home
from components.promote.pusher import model_store as ms


def _parse(path: Path):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return config


def _visible(base: Path) -> list[str]:
    root = base / "leukemia"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def test_write_version_and_never_overwrite(models):
    path = ms.write_version(models["good"], 1)
    assert path == home.model_base() / "leukemia" / "1"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert ms.list_versions() == [1]
    before = (path / "saved_model.pb").read_bytes()
    with pytest.raises(ms.VersionExists):
        ms.write_version(models["worse"], 1)
    assert (path / "saved_model.pb").read_bytes() == before
    assert _visible(home.model_base()) == ["1"]


def test_pb_copied_last(models, monkeypatch):
    order = []
    real_all, real_pb = ms._copy_all_but_pb, ms._copy_pb
    monkeypatch.setattr(
        ms, "_copy_all_but_pb", lambda s, t: (real_all(s, t), order.append(sorted(p.name for p in t.iterdir())))
    )
    monkeypatch.setattr(ms, "_copy_pb", lambda s, t: (real_pb(s, t), order.append(sorted(p.name for p in t.iterdir()))))
    ms.write_version(models["good"], 3)
    assert "saved_model.pb" not in order[0] and "variables" in order[0]
    assert "saved_model.pb" in order[1]


def test_models_config_round_trip_with_tf_serving_protos(models):
    ms.write_version(models["good"], 1)
    step1, step2 = ms.move_label("stable", 1)
    assert step1.versions == [1] and step1.labels == {}
    assert step2.labels == {"stable": 1}
    config = _parse(home.models_config_path())
    (entry,) = config.model_config_list.config
    assert entry.name == "leukemia" and entry.model_platform == "tensorflow"
    assert entry.base_path == str(home.model_base() / "leukemia")
    assert list(entry.model_version_policy.specific.versions) == [1]
    assert dict(entry.version_labels) == {"stable": 1}
    assert ms.read_state().to_dict()["labels"] == {"stable": 1}


def test_label_move_is_two_steps_in_tf_serving_order(models):
    for v in (1, 2, 3):
        ms.write_version(models["good"], v)
    ms.move_label("stable", 1)
    seen = []
    step1, step2 = ms.move_label("stable", 2, between=lambda s, v: seen.append((v, _parse(home.models_config_path()))))
    # step 1 on disk: both versions served, the label still on the old one
    assert seen[0][0] == 2
    entry = seen[0][1].model_config_list.config[0]
    assert sorted(entry.model_version_policy.specific.versions) == [1, 2] and dict(entry.version_labels) == {
        "stable": 1
    }
    assert step2.versions == [1, 2] and step2.labels == {"stable": 2}
    ms.move_label("canary", 3)
    ms.move_label("stable", 3)  # canary graduates; v1 is dropped, v2 (previous stable) kept for rollback
    state = ms.read_state()
    assert state.labels == {"stable": 3} and state.versions == [2, 3]


def test_other_models_in_config_are_kept(models):
    path = home.models_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('model_config_list { config { name: "other" base_path: "/m/other" model_platform: "tensorflow" } }')
    ms.write_version(models["good"], 1)
    ms.move_label("stable", 1)
    names = [c.name for c in _parse(path).model_config_list.config]
    assert names == ["other", "leukemia"]


def test_label_requires_version_in_store_and_known_label(models):
    with pytest.raises(FileNotFoundError):
        ms.move_label("stable", 7)
    with pytest.raises(ValueError, match="unknown label"):
        ms.plan_label_move(None, "beta", 1, "/x")
    assert not home.models_config_path().exists()


@pytest.mark.parametrize("step", ["_make_temp", "_copy_all_but_pb", "_copy_pb", "_fsync_tree", "_rename_into_place"])
def test_crash_in_export_copy_leaves_no_partial_version(models, monkeypatch, step):
    ms.write_version(models["good"], 1)
    ms.move_label("stable", 1)
    config_before = home.models_config_path().read_bytes()

    def boom(*a, **k):
        raise OSError(f"injected failure in {step}")

    monkeypatch.setattr(ms, step, boom)
    with pytest.raises(OSError, match="injected"):
        ms.write_version(models["worse"], 2)
    root = home.model_base() / "leukemia"
    assert _visible(home.model_base()) == ["1"]
    assert not [p for p in root.iterdir() if p.name.startswith(ms.TMP_PREFIX)]
    assert home.models_config_path().read_bytes() == config_before
    _parse(home.models_config_path())


@pytest.mark.parametrize("step", ["_write_temp_config", "_fsync_config", "_replace_config"])
@pytest.mark.parametrize("which", [1, 2])
def test_crash_in_config_rewrite_keeps_valid_config(models, monkeypatch, step, which):
    ms.write_version(models["good"], 1)
    ms.write_version(models["good"], 2)
    ms.move_label("stable", 1)
    before = home.models_config_path().read_bytes()
    real = getattr(ms, step)
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == which:
            raise OSError(f"injected failure in {step} #{which}")
        return real(*a, **k)

    monkeypatch.setattr(ms, step, flaky)
    with pytest.raises(OSError, match="injected"):
        ms.move_label("stable", 2)
    config = _parse(home.models_config_path())  # always a complete, valid ModelServerConfig
    assert not list(home.models_config_path().parent.glob(".*.tmp"))
    entry = config.model_config_list.config[0]
    if which == 1:
        assert home.models_config_path().read_bytes() == before
    else:  # step 1 landed: both served, label still on the old version (a valid TF Serving state)
        assert dict(entry.version_labels) == {"stable": 1}


def test_remove_version_and_stale_temporaries(models):
    ms.write_version(models["good"], 1)
    (home.model_base() / "leukemia" / f"{ms.TMP_PREFIX}2-dead").mkdir()
    assert ms.clean_stale_temporaries() == [f"{ms.TMP_PREFIX}2-dead"]
    ms.remove_version(1)
    assert ms.list_versions() == [] and _visible(home.model_base()) == []


def test_wait_for_version_polls_a_rest_status_endpoint(models):
    """Between the steps, a running server is asked (TF Serving REST status) until the version is AVAILABLE."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    calls = []

    class Status(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            calls.append(self.path)
            state = "AVAILABLE" if len(calls) >= 3 else "LOADING"
            body = json.dumps({"model_version_status": [{"version": "2", "state": state}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert ms.wait_for_version(2, url, timeout_s=10, poll_s=0.01) == "AVAILABLE"
        assert calls[0] == "/v1/models/leukemia/versions/2" and len(calls) == 3
    finally:
        server.shutdown()
    assert ms.wait_for_version(2, url, timeout_s=1).startswith("no server")  # nothing listening: no wait
    assert ms.wait_for_version(2, "") == "no server configured"
