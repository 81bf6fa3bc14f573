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


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    """One local run of the smoke profile (32x32, two epochs), shared by the checks below."""
    base = tmp_path_factory.mktemp("e2e")
    data = make_synthetic_dataset(base / "data", per_class=24, size=32, seed=3)
    env = dict(os.environ, LEUKOFLOW_HOME=str(base / "home"))
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "--local", "--profile", "smoke",
         "--data-dir", data["root"], "--model", "cnn", "--model", "mobilenetv2", "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print exactly one object, got: {proc.stdout[:500]}"
    return {"result": json.loads(lines[0]), "home": base / "home", "data": data}


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
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "registry", "list", "--json"],
                          capture_output=True, text=True, env=env, check=True)
    listed = {row["version"]: row for row in json.loads(proc.stdout)}
    assert "champion" in listed[version]["aliases"] and listed[version]["label"] == "stable"
    assert Path(listed[version]["model_path"]) == Path(config.base_path) / str(version)
