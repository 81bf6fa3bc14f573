"""`leukoflow monitor ...`: the CLI end to end on small images, the request log and the trigger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monitor_smears import balanced, save_images
from typer.testing import CliRunner

from components import home
from monitoring import cli
from monitoring.request_log import RequestLog

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def reference_file(reference_frame, tmp_path) -> Path:
    path = tmp_path / "reference_features.parquet"
    reference_frame.rename(columns={"class": "label"}).to_parquet(path)
    return path


def _json(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.mark.slow
def test_images_folder_drift_exit_code_and_json(reference_file, tmp_path):
    bright = tmp_path / "bright"
    save_images(bright, balanced(60), seed=5, lamp=1.2)
    env = {**os.environ, "LEUKOFLOW_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "monitor",
            "drift",
            "--images",
            str(bright),
            "--reference",
            str(reference_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == cli.EXIT_DRIFT, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "drift" and result["images"] == 60
    assert result["drifted_features"] and result["case_mix_changed"] is False
    assert Path(result["report_html"]).is_file() and Path(result["report_json"]).is_file()
    assert str(tmp_path / "home") in result["report_html"]
    assert "drift" in proc.stderr  # the alert's log line


@pytest.mark.slow
def test_images_folder_without_drift(reference_file, tmp_path):
    same = tmp_path / "same"
    save_images(same, balanced(60), seed=6, class_folders=False)  # no labels: pooled comparison
    result = runner.invoke(
        cli.app, ["drift", "--images", str(same), "--reference", str(reference_file), "--json", "--no-workspace"]
    )
    assert result.exit_code == 0, result.output
    out = _json(result)
    assert out["status"] == "no_drift" and out["case_mix_changed"] is False


def _log_window(frame, version: str = "1") -> None:
    log = RequestLog(home.request_log_dir())
    for _, row in frame.iterrows():
        log.append(
            {
                "model": "leukemia",
                "version": version,
                "label": "stable",
                "predicted_label": row["class"],
                "confidences": {"Benign": 0.25, "Early": 0.25, "Pre": 0.25, "Pro": 0.25},
                "features": {k: float(v) for k, v in row.items() if k != "class"},
            }
        )


@pytest.mark.slow
def test_request_log_drift_triggers_once(reference_file, bright_window, tmp_path, monkeypatch, recording_kfp):
    package, calls_file = recording_kfp
    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    # The served version's reference, where the monitor looks for it.
    version_dir = home.model_base() / "leukemia" / "1" / "assets.extra"
    version_dir.mkdir(parents=True)
    (version_dir / "reference_features.parquet").write_bytes(reference_file.read_bytes())
    _log_window(bright_window)

    args = [
        "drift",
        "--since",
        "1h",
        "--json",
        "--trigger",
        "--kfp-host",
        "http://kfp:8888",
        "--pipeline-package",
        str(package),
        "--no-workspace",
    ]
    first = runner.invoke(cli.app, args)
    assert first.exit_code == cli.EXIT_DRIFT, first.output
    out = _json(first)
    assert out["status"] == "drift" and out["trigger"]["triggered"] is True
    assert out["reference"].endswith("1/assets.extra/reference_features.parquet")
    second = _json(runner.invoke(cli.app, args))
    assert second["status"] == "drift" and second["trigger"]["triggered"] is False
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert len(calls) == 1 and calls[0]["arguments"]["drift_report"] == out["report_json"]

    state = _json(runner.invoke(cli.app, ["trigger-state", "--json"]))
    assert state["episode"]["checks"] == 2 and state["last_trigger"]["run_id"] == "run-1"


def test_insufficient_data_and_errors(reference_file, same_window, tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    _log_window(same_window.head(5))
    result = runner.invoke(cli.app, ["drift", "--since", "24h", "--reference", str(reference_file), "--json"])
    assert result.exit_code == 0 and _json(result)["status"] == "insufficient_data"

    no_ref = runner.invoke(cli.app, ["drift", "--since", "24h", "--json"])
    assert no_ref.exit_code == 1 and "no reference profile" in _json(no_ref)["error"]
    bad = runner.invoke(cli.app, ["drift", "--since", "yesterday", "--reference", str(reference_file), "--json"])
    assert bad.exit_code == 1 and "duration" in _json(bad)["error"]
    both = runner.invoke(cli.app, ["drift", "--since", "1h", "--images", str(tmp_path), "--json"])
    assert both.exit_code == 1
    missing = runner.invoke(
        cli.app, ["reference", "--split-dir", str(tmp_path / "nope"), "--output", str(tmp_path / "r.parquet"), "--json"]
    )
    assert missing.exit_code == 1 and "train/" in _json(missing)["error"]


def test_local_retraining_gets_the_runner_from_the_root_cli(reference_file, tmp_path, monkeypatch, capsys):
    """`leukoflow monitor drift --trigger` without a KFP host runs the pipeline runner the root CLI hands down."""
    import pipelines.cli
    import pipelines.local

    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KFP_HOST", raising=False)
    bright = tmp_path / "bright"
    save_images(bright, balanced(60), seed=5, lamp=1.2)
    calls = []
    monkeypatch.setattr(pipelines.local, "run_local", lambda **kw: calls.append(kw) or {"status": "succeeded"})
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "leukoflow",
            "monitor",
            "drift",
            "--images",
            str(bright),
            "--reference",
            str(reference_file),
            "--json",
            "--no-workspace",
            "--trigger",
            "--data-dir",
            str(tmp_path),
            "--profile",
            "smoke",
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        pipelines.cli.main()
    assert exit_.value.code == cli.EXIT_DRIFT
    out = json.loads(capsys.readouterr().out)
    assert out["trigger"]["triggered"] is True, out["trigger"]
    assert len(calls) == 1 and calls[0]["profile"] == "smoke" and calls[0]["drift_report"] == out["report_json"]
