"""`leukoflow data validate|dedup|preprocess|split`: --json prints exactly one object; errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from components.dedup.cli import app as dedup_app
from components.preprocess.cli import app as preprocess_app
from components.split.cli import app as split_app
from components.validate.cli import app as validate_app

runner = CliRunner()


def _json(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_validate_json(synthetic_data, tmp_path):
    result = runner.invoke(
        validate_app, ["--data-dir", synthetic_data["root"], "--out", str(tmp_path), "--min-per-class", "10", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = _json(result)
    assert out["success"] is True and out["images"] == len(synthetic_data["files"])
    assert sorted(out["quarantined"]) == sorted(synthetic_data["corrupt"]) and out["failed_expectations"] == []


def test_validate_critical_failure_exits_nonzero(synthetic_data, tmp_path):
    result = runner.invoke(validate_app, ["--data-dir", synthetic_data["root"], "--out", str(tmp_path), "--json"])
    assert result.exit_code == 1
    out = _json(result)  # default minimum (20 per class) is more than the synthetic set has
    assert out["success"] is False and out["failed_expectations"] == ["per_class_minimum_count"]
    assert "per_class_minimum_count" in result.stderr


def test_validate_missing_data(tmp_path):
    result = runner.invoke(validate_app, ["--data-dir", str(tmp_path / "nothing"), "--json"])
    assert result.exit_code == 1
    assert "dvc pull" in _json(result)["error"]


def test_chain_with_default_dirs(synthetic_data, tmp_path, monkeypatch):
    """dedup -> preprocess -> split, each finding the previous step's output under LEUKOFLOW_HOME."""
    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    dedup = runner.invoke(dedup_app, ["--data-dir", synthetic_data["root"], "--json"])
    assert dedup.exit_code == 0, dedup.output
    out = _json(dedup)
    assert set(out) >= {"images", "kept", "groups", "conflicts"}
    assert [sorted(c) for c in out["conflicts"]] == [sorted(synthetic_data["cross_label"])]
    assert (tmp_path / "home" / "runs" / "data" / "dedup" / "kept.csv").is_file()
    pre = runner.invoke(preprocess_app, ["--profile", "smoke", "--num-shards", "1", "--json"])
    assert pre.exit_code == 0, pre.output
    assert _json(pre)["count"] == out["kept"] and _json(pre)["image_size"] == 32  # smoke's source size
    unknown = runner.invoke(preprocess_app, ["--profile", "huge", "--json"])
    assert unknown.exit_code == 1 and "unknown profile 'huge'" in _json(unknown)["error"]
    pre = runner.invoke(preprocess_app, ["--image-size", "8", "--num-shards", "1", "--json"])
    assert pre.exit_code == 0 and _json(pre)["image_size"] == 8, pre.output
    split = runner.invoke(split_app, ["--json"])
    assert split.exit_code == 0, split.output
    res = _json(split)
    assert sum(res["counts"].values()) == out["kept"] and res["shards"]["train"]
    human = runner.invoke(split_app, [])
    assert "| total |" in human.stdout


def test_split_without_dedup_output_is_a_clear_error(tmp_path):
    result = runner.invoke(split_app, ["--kept", str(tmp_path / "none.csv"), "--json"])
    assert result.exit_code == 1 and "dedup" in _json(result)["error"]


def test_root_cli_dedup_json(synthetic_data, tmp_path):
    """Through the installed `leukoflow` entry point (lazy group): one JSON object, logs on stderr."""
    env = {**os.environ, "LEUKOFLOW_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "data",
            "dedup",
            "--data-dir",
            synthetic_data["root"],
            "--out",
            str(tmp_path / "d"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["images"] == synthetic_data["decodable"] and len(out["groups"]) == 6
    bad = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "data", "validate", "--data-dir", str(tmp_path / "none"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "dvc pull" in json.loads(bad.stdout)["error"]
