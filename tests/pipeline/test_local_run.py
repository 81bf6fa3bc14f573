"""The whole pipeline runs here under kfp.local.SubprocessRunner on a synthetic set, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow
# The run's own limit, under pytest's 600 s per test (pyproject): a stuck run fails with its log, not a bare timeout.
RUN_TIMEOUT_S = 540


def run_pipeline(data_root: str, env: dict, *models_and_flags: str, timeout: float) -> subprocess.CompletedProcess:
    """`leukoflow pipeline run --local --profile smoke` on `data_root`: each model name gets a `--model`, flags
    (starting with --) pass as they are."""
    args = [a for m in models_and_flags for a in ((m,) if m.startswith("--") else ("--model", m))]
    cmd = [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "--local", "--profile", "smoke"]
    return subprocess.run(
        [*cmd, "--data-dir", data_root, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    """One local run of the smoke profile (32x32, eight epochs for the CNN, two for the others), shared by the checks below."""
    base = tmp_path_factory.mktemp("e2e")
    data = make_synthetic_dataset(base / "data", per_class=24, size=32, seed=3)
    env = dict(os.environ, LEUKOFLOW_HOME=str(base / "home"))
    try:
        proc = run_pipeline(data["root"], env, "cnn", "mobilenetv2", "--json", timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        log = (exc.stderr or b"").decode(errors="replace")  # bytes whatever `text` says
        pytest.fail(f"the local run took over {RUN_TIMEOUT_S} s; its log ends:\n{log[-4000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print exactly one object, got: {proc.stdout[:500]}"
    return {"result": json.loads(lines[0]), "home": base / "home", "data": data, "progress": proc.stderr, "env": env}


def test_run_reports_status_root_and_models(local_run):
    result = local_run["result"]
    assert result["status"] == "SUCCEEDED"
    assert Path(result["pipeline_root"]).is_dir()
    assert set(result["models"]) == {"cnn", "mobilenetv2"}
    for figures in result["models"].values():
        assert 0.0 <= figures["accuracy"] <= 1.0 and 0.0 <= figures["macro_f1"] <= 1.0
        assert (Path(figures["saved_model"]) / "saved_model.pb").is_file()


def test_no_duplicate_group_straddles_splits(local_run):
    import csv

    root = Path(local_run["result"]["pipeline_root"])
    split_csv = next(root.rglob("split.csv"))
    rows = list(csv.DictReader(split_csv.open()))
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row["group_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_group.values())
    dedup = json.loads(next(root.rglob("dedup.json")).read_text())
    assert len(rows) == dedup["kept"]


def test_gate_promoted_one_model_everywhere(local_run):
    """The gate promoted a model, and the registry, the model store and models.config agree on it."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    decision = local_run["result"]["decision"]
    assert decision["promoted"] is True, decision["reason"]
    version = decision["version"]
    assert isinstance(version, int)

    config_text = (local_run["home"] / "serving" / "models.config").read_text()
    config = text_format.Parse(config_text, model_server_config_pb2.ModelServerConfig()).model_config_list.config[0]
    assert config.version_labels["stable"] == version
    assert version in config.model_version_policy.specific.versions
    assert (Path(config.base_path) / str(version) / "saved_model.pb").is_file()
    assert (Path(config.base_path) / str(version) / "assets.extra" / "reference_features.parquet").is_file()

    env = dict(os.environ, LEUKOFLOW_HOME=str(local_run["home"]))
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "registry", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    listed = {row["version"]: row for row in json.loads(proc.stdout)}
    assert "champion" in listed[version]["aliases"] and listed[version]["label"] == "stable"
    assert Path(listed[version]["model_path"]) == Path(config.base_path) / str(version)


def test_progress_is_one_line_per_step_and_the_full_log_is_in_a_file(local_run):
    """With --json the progress goes to stderr: step starts and ends with key figures, not the runner's output."""
    progress = local_run["progress"].splitlines()
    assert len(progress) <= 36, "\n".join(progress)  # 2 models: 13 steps x 2 lines, a few epoch lines, the header
    text = local_run["progress"]
    for expected in (
        "validate           started",
        "validate           ok in",
        "images:",
        "kept (",
        "split              ok in",
        "train 6",
        "train cnn          epoch 3/8: val accuracy",
        "evaluate mobilenetv2 ok in",
        "macro-F1",
        "gate               ok in",
        "promote cnn        ok in",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    for noise in ("executor_input", "cuInit", "UserWarning", "RuntimeWarning", '"outputFile"'):
        assert noise not in text, f"{noise!r} on the console:\n{text}"
    assert not any(line.startswith("/") or " /" in line for line in progress), "a machine path on the console"

    result = local_run["result"]
    log = Path(result["log"])
    assert log.is_file() and log.is_relative_to(local_run["home"] / "runs")
    assert f"full log $LEUKOFLOW_HOME/runs/{log.parent.name}/pipeline.log" in text
    full = log.read_text()
    assert "Got executor_input:" in full and "Epoch 1/2" in full  # everything the console left out is in the log
    assert [s["step"] for s in result["steps"]].count("train") == 2


def test_human_summary_has_figures_and_no_machine_paths(local_run, monkeypatch):
    from pipelines.pipeline_cli import _human_summary

    monkeypatch.setenv("LEUKOFLOW_HOME", str(local_run["home"]))

    text = _human_summary(local_run["result"])
    assert "pipeline SUCCEEDED in" in text and "gate: promoted" in text
    assert "artifacts: $LEUKOFLOW_HOME/pipeline-root/leukoflow-" in text and "full log: $LEUKOFLOW_HOME/runs/" in text
    assert str(local_run["home"]) not in text
    assert len(text.splitlines()) <= 8


def test_human_summary_says_when_the_gate_chose_but_promotion_was_disabled():
    from pipelines.pipeline_cli import _human_summary

    run = {
        "status": "SUCCEEDED",
        "wall_time_s": 1.0,
        "profile": "quick",
        "models": {},
        "log": "/tmp/run.log",
        "decision": {"promoted": True, "chosen": "mobilenetv2", "version": None, "reason": "passes the floors"},
    }
    assert "gate: chose mobilenetv2, not promoted (promotion disabled): passes the floors" in _human_summary(run)
    assert "as version" not in _human_summary(run)
    run["decision"]["version"] = "5"
    assert "gate: promoted mobilenetv2 as version 5: passes the floors" in _human_summary(run)


def test_status_after_the_run(local_run):
    """`leukoflow status --json` names the served version, the champion and the run that produced it."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "status", "--json"],
        capture_output=True,
        text=True,
        env=local_run["env"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    version = local_run["result"]["decision"]["version"]
    assert status["ok"] is True and status["problems"] == []
    assert status["serving"]["labels"] == {"stable": version} and version in status["serving"]["store_versions"]
    assert status["registry"]["champion"]["version"] == version
    assert status["registry"]["champion"]["model"] == local_run["result"]["decision"]["chosen"]
    assert status["registry"]["challenger"] is None
    run = status["last_pipeline_run"]
    assert run["status"] == "SUCCEEDED" and run["pipeline_root"] == local_run["result"]["pipeline_root"]
    assert run["decision"]["version"] == version
    assert status["last_drift_check"] is None and status["request_log"]["requests"] == 0


def test_a_failing_step_shows_its_last_lines_and_the_log(tmp_path):
    """Too few images per class: validation fails; the console says which step, why, and where the log is."""
    data = make_synthetic_dataset(tmp_path / "data", per_class=3, size=32, seed=5, defects=False)
    env = dict(os.environ, LEUKOFLOW_HOME=str(tmp_path / "home"))
    proc = run_pipeline(data["root"], env, "cnn", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert "validate           FAILED in" in out and "last lines of validate:" in out, out
    assert "critical expectations failed" in out, out  # the validation's own message, from the step's last lines
    assert "pipeline FAILED in" in out and "failed step validate" in out
    assert "full log: $LEUKOFLOW_HOME/runs/" in out
    assert "dedup              started" not in out  # nothing ran after the failure, and that is one line
    skipped = next(line for line in out.splitlines() if "not run after the failure: " in line)
    assert {"dedup", "preprocess", "split", "train and evaluate", "gate", "promote"} <= set(
        skipped.split(": ", 1)[1].split(", ")
    )
    assert len(out.splitlines()) <= 30, out
    record = json.loads(next((tmp_path / "home" / "runs").glob("*/run.json")).read_text())
    assert record["status"] == "FAILED" and record["failed_steps"] == ["validate"]
    assert "Traceback" in Path(record["log"]).read_text()
