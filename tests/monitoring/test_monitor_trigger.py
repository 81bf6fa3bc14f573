"""The retraining trigger (one run per drift episode, cooldown, state across restarts), alerts and schedules.

kfp.Client needs a live KFP server, so it is replaced at that one boundary by a recorder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from monitoring import alerts, schedule, trigger

REPO = Path(__file__).resolve().parents[2]


class RecordingClient:
    """Stands in for kfp.Client: records calls in a JSON-lines file so a second process can add to it."""

    calls_file: Path | None = None

    def __init__(self, host=None, **_):
        self.host = host

    def _record(self, **call):
        with open(self.calls_file, "a") as handle:
            handle.write(json.dumps(call, default=str) + "\n")

    def create_run_from_pipeline_package(
        self, pipeline_file, arguments=None, run_name=None, experiment_name=None, namespace=None, **_
    ):
        self._record(
            method="run", host=self.host, package=pipeline_file, arguments=arguments, experiment=experiment_name
        )
        return SimpleNamespace(run_id="run-1")

    def get_experiment(self, experiment_id=None, experiment_name=None, namespace=None):
        raise ValueError(f"No experiment is found with name {experiment_name}.")

    def create_experiment(self, name, description=None, namespace=None):
        self._record(method="create_experiment", name=name)
        return SimpleNamespace(experiment_id="exp-1")

    def create_recurring_run(self, **kwargs):
        self._record(method="recurring", **kwargs)
        return SimpleNamespace(recurring_run_id="rr-1")


@pytest.fixture
def fake_kfp(tmp_path, monkeypatch):
    import kfp

    RecordingClient.calls_file = tmp_path / "kfp-calls.jsonl"
    RecordingClient.calls_file.touch()
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return RecordingClient.calls_file


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drift(report: str = "/r/report.json", status: str = "drift") -> dict:
    return {
        "status": status,
        "images": 200,
        "drifted_features": ["brightness_mean", "red_mean"],
        "case_mix_changed": False,
        "report_json": report,
        "report_html": "/r/report.html",
        "reference": "/ref.parquet",
    }


def test_one_run_per_episode_across_restart(tmp_path, fake_kfp):
    package = tmp_path / "pipeline.yaml"
    package.write_text("# compiled pipeline\n")
    state = tmp_path / "state" / "trigger_state.json"
    config = trigger.TriggerConfig(host="http://kfp.example:8888", package=str(package), state_file=state)

    first = trigger.maybe_trigger(_drift("/r/1.json"), config)
    assert first["triggered"] and first["run"]["run_id"] == "run-1"
    assert trigger.maybe_trigger(_drift("/r/2.json"), trigger.TriggerConfig(**vars(config)))["triggered"] is False

    # A restart: a fresh interpreter reads the same state file and must not start a second run.
    code = f"""
import json, kfp, sys
sys.path.insert(0, {str(REPO / "tests" / "monitoring")!r})
from test_monitor_trigger import RecordingClient
from pathlib import Path
RecordingClient.calls_file = Path({str(fake_kfp)!r})
kfp.Client = RecordingClient
from monitoring import trigger
out = trigger.maybe_trigger({{"status": "drift", "report_json": "/r/3.json", "reference": "/ref.parquet"}},
    trigger.TriggerConfig(host="http://kfp.example:8888", package={str(package)!r}, state_file=Path({str(state)!r})))
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["triggered"] is False

    runs = [c for c in _calls(fake_kfp) if c["method"] == "run"]
    assert len(runs) == 1
    assert runs[0]["arguments"]["drift_report"] == "/r/1.json"
    assert runs[0]["experiment"] == trigger.DEFAULT_EXPERIMENT
    saved = json.loads(state.read_text())
    assert saved["episode"]["checks"] == 3 and saved["runs"][0]["run_id"] == "run-1"

    # The episode ends with a clean check; a new episode inside the cooldown still waits...
    now = datetime.now(UTC)
    trigger.maybe_trigger(_drift(status="no_drift"), config, now=now + timedelta(hours=1))
    inside = trigger.maybe_trigger(_drift("/r/4.json"), config, now=now + timedelta(hours=2))
    assert not inside["triggered"] and "cooldown" in inside["reason"]
    # ...and starts one run once the cooldown has passed.
    after = trigger.maybe_trigger(_drift("/r/5.json"), config, now=now + timedelta(hours=25))
    assert after["triggered"]
    assert len([c for c in _calls(fake_kfp) if c["method"] == "run"]) == 2


def test_failed_submission_is_recorded_and_retried(tmp_path, fake_kfp):
    state = tmp_path / "trigger_state.json"
    config = trigger.TriggerConfig(host="http://kfp", package=str(tmp_path / "missing.yaml"), state_file=state)
    out = trigger.maybe_trigger(_drift(), config)
    assert not out["triggered"] and "pipeline package not found" in out["reason"]
    saved = json.loads(state.read_text())
    assert saved["episode"]["run"] is None and saved["last_trigger"] is None and saved["runs"][0]["started"] is False
    (tmp_path / "missing.yaml").write_text("x")
    assert trigger.maybe_trigger(_drift(), config)["triggered"]


def test_corrupt_state_is_an_error(tmp_path):
    state = tmp_path / "trigger_state.json"
    state.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        trigger.maybe_trigger(_drift(), trigger.TriggerConfig(state_file=state))


def test_webhook_posts_summary_to_local_server(monkeypatch):
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        outcome = alerts.alert(_drift(), webhook=url)
        assert outcome["webhook"]["status"] == 204
        assert received[0]["status"] == "drift" and received[0]["drifted_features"] == ["brightness_mean", "red_mean"]
        assert "brightness_mean" in received[0]["text"]
        # From the environment; a clean verdict sends nothing.
        monkeypatch.setenv(alerts.WEBHOOK_ENV, url)
        assert alerts.alert(_drift(status="no_drift"))["webhook"] is None
        assert len(received) == 1
    finally:
        server.shutdown()
    # A dead webhook is logged, never raised.
    assert "error" in alerts.alert(_drift(), webhook="http://127.0.0.1:9/none")["webhook"]
    with pytest.raises(ValueError, match="http"):
        alerts.webhook_url("ftp://x")


@pytest.mark.parametrize(
    "expr,ok",
    [
        ("0 0 * * * *", True),
        ("0 */15 8-18 * * MON-FRI", True),
        ("0 0 3 ? * 1", True),
        ("0 0 3 1,15 JAN *", True),
        ("0 * * * *", False),
        ("60 0 * * * *", False),
        ("0 0 25 * * *", False),
        ("0 0 * * * 7", False),
        ("0 0 */0 * * *", False),
        ("0 5-1 * * * *", False),
        ("", False),
    ],
)
def test_validate_cron(expr, ok):
    if ok:
        assert schedule.validate_cron(expr) == " ".join(expr.split())
    else:
        with pytest.raises(ValueError):
            schedule.validate_cron(expr)


def test_create_schedule_creates_experiment(tmp_path, fake_kfp):
    package = tmp_path / "pipeline.yaml"
    package.write_text("x")
    out = schedule.create_schedule(
        "0 0 3 * * 1", "weekly", str(package), host="http://kfp", job_name="leukoflow-weekly"
    )
    assert out["recurring_run_id"] == "rr-1" and out["experiment_id"] == "exp-1"
    calls = _calls(fake_kfp)
    assert calls[0] == {"method": "create_experiment", "name": "weekly"}
    assert calls[1]["cron_expression"] == "0 0 3 * * 1" and calls[1]["experiment_id"] == "exp-1"
    assert calls[1]["max_concurrency"] == 1
    with pytest.raises(ValueError, match="6"):
        schedule.create_schedule("0 3 * * 1", "weekly", str(package))
    with pytest.raises(FileNotFoundError):
        schedule.create_schedule("0 0 3 * * 1", "weekly", str(tmp_path / "nope.yaml"))


def test_local_trigger_errors_are_clear_and_release_the_episode(tmp_path):
    state = tmp_path / "trigger_state.json"
    out = trigger.maybe_trigger(_drift(), trigger.TriggerConfig(data_dir=str(tmp_path), state_file=state))
    assert not out["triggered"] and "no local pipeline runner" in out["reason"]  # none handed in from above
    calls = []
    config = trigger.TriggerConfig(
        data_dir=str(tmp_path / "no-data"),
        state_file=state,
        profile="smoke",
        local_runner=lambda **kw: calls.append(kw) or {"status": "succeeded"},
    )
    out = trigger.maybe_trigger(_drift(), config)
    assert not out["triggered"] and "data directory not found" in out["reason"]
    assert json.loads(state.read_text())["episode"]["run"] is None and not calls
    (tmp_path / "no-data").mkdir()
    out = trigger.maybe_trigger(_drift("/r/9.json"), config)
    assert out["triggered"] and out["run"]["status"] == "succeeded"
    assert calls == [{"data_dir": str(tmp_path / "no-data"), "profile": "smoke", "drift_report": "/r/9.json"}]
