"""`leukoflow status --json` on a hand-made state home: consistent, then a label on a missing version (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from components.promote.pusher import model_store


def _status(home: Path) -> tuple[int, dict]:
    env = dict(os.environ, LEUKOFLOW_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout + proc.stderr[-2000:]
    return proc.returncode, json.loads(lines[0])


def _serve(home: Path, versions: list[int], labels: dict[str, int], stored: list[int]) -> None:
    base = home / "models" / "leukemia"
    for version in stored:
        (base / str(version)).mkdir(parents=True, exist_ok=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"")
    state = model_store.ServingState(name="leukemia", base_path=str(base), versions=versions, labels=labels)
    model_store.write_models_config(model_store.build_config(state), home / "serving" / "models.config")


def test_status_reports_runs_drift_trigger_and_traffic(tmp_path):
    home = tmp_path / "home"
    _serve(home, versions=[], labels={}, stored=[])
    now = datetime.now(UTC)
    run = home / "runs" / "20260101-000000-000000"
    run.mkdir(parents=True)
    (run / "run.json").write_text(
        json.dumps(
            {
                "run_id": run.name,
                "status": "FAILED",
                "started_at": now.isoformat(),
                "finished_at": now.isoformat(),
                "profile": "smoke",
                "log": str(run / "pipeline.log"),
                "pipeline_root": None,
                "failed_steps": ["validate"],
            }
        )
    )
    report = home / "reports" / "drift" / "2026-01-01T00-00-00Z" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(
        json.dumps(
            {
                "summary": {
                    "status": "drift",
                    "checked_at": now.isoformat(),
                    "images": 80,
                    "drifted_features": ["mean_r", "mean_b"],
                }
            }
        )
    )
    (home / "monitoring").mkdir()
    (home / "monitoring" / "trigger_state.json").write_text(
        json.dumps(
            {
                "episode": None,
                "last_check": None,
                "runs": [],
                "last_trigger": {"at": (now - timedelta(hours=1)).isoformat(), "status": "started", "mode": "local"},
            }
        )
    )
    (home / "requests").mkdir()
    old, new = (now - timedelta(hours=30)).isoformat(), (now - timedelta(minutes=5)).isoformat()
    (home / "requests" / "requests.jsonl").write_text(
        "".join(json.dumps({"timestamp": t, "version": 1}) + "\n" for t in (old, new, new)) + "not json\n"
    )

    code, status = _status(home)
    assert code == 0 and status["ok"], status["problems"]
    assert status["last_pipeline_run"]["status"] == "FAILED" and status["last_pipeline_run"]["failed_steps"] == [
        "validate"
    ]
    assert status["last_drift_check"]["status"] == "drift" and status["last_drift_check"]["report_json"] == str(report)
    assert status["trigger"]["in_cooldown"] is True
    assert status["request_log"]["requests"] == 2 and status["request_log"]["by_version"] == {"1": 2}
    assert status["registry"]["champion"] is None and not (home / "mlflow.db").exists()  # looking creates nothing


def test_a_label_on_a_missing_version_exits_non_zero(tmp_path):
    home = tmp_path / "home"
    _serve(home, versions=[1, 2], labels={"stable": 2}, stored=[1])
    code, status = _status(home)
    assert code == 1 and status["ok"] is False
    problems = "\n".join(status["problems"])
    assert "label stable points at version 2, which is not in the model store" in problems
    assert "models.config serves version 2, which is not in the model store" in problems
    assert "model store holds version 1, which the registry does not know" in problems  # store vs registry
