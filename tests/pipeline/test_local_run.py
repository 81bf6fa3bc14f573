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


def test_gate_decided_and_promotion_is_consistent(local_run):
    result = local_run["result"]
    decision = result["decision"]
    assert decision is not None and "promote" in decision
    models_config = local_run["home"] / "serving" / "models.config"
    if decision["promote"]:
        from tensorflow_serving.config import model_server_config_pb2
        from google.protobuf import text_format

        config = text_format.Parse(models_config.read_text(), model_server_config_pb2.ModelServerConfig())
        versions = list(config.model_config_list.config[0].model_version_policy.specific.versions)
        assert versions and all((Path(config.model_config_list.config[0].base_path) / str(v) / "saved_model.pb").is_file() for v in versions)
    else:
        assert not models_config.exists() or "stable" not in models_config.read_text()
