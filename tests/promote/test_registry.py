"""The MLflow registry on a real sqlite file, including the MLFLOW_TRACKING_URI override."""

from __future__ import annotations

import shutil
import sqlite3

from fixtures import promote_candidates as H

from components import home
from components.promote import registry


def test_round_trip_on_overridden_sqlite(tmp_path, monkeypatch, models, _template_db):
    db = tmp_path / "elsewhere.db"
    shutil.copy(_template_db, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert home.registry_uri() == f"sqlite:///{db}"
    metrics = H.metrics("mobilenetv2", 0.96, 0.97, 3_400_000)
    version, run_id = registry.create_version(
        models["good"], metrics, {"config": {"epochs": 3}}, {"model": "mobilenetv2", "status": "pending"}, artifacts=[]
    )
    assert version == 1
    registry.assign_label(version, "canary")
    registry.assign_label(version, "stable")
    assert registry.get_aliases() == {"champion": 1} and registry.champion_history() == [1]
    # a fresh client on the same file sees everything
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    mv = c.get_model_version_by_alias(registry.settings.REGISTERED_MODEL_NAME, "champion")
    assert int(mv.version) == 1 and mv.tags["model"] == "mobilenetv2"
    run = c.get_run(run_id)
    assert run.data.params["config.epochs"] == "3" and run.data.metrics["accuracy_ci.0"] == 0.96
    with sqlite3.connect(db) as conn:
        assert conn.execute("select alias, version from registered_model_aliases").fetchall() == [("champion", 1)]
    assert not (home.home() / "mlflow.db").exists() or home.home() / "mlflow.db" != db
    # delete (the undo path) removes the version and its aliases
    registry.delete_version(version, run_id)
    assert registry.versions() == [] and registry.get_aliases() == {}


def test_metric_names_are_valid_mlflow_keys():
    flat = registry.flatten_metrics(
        {
            "robustness": {"brightness+15%": 0.9, "hue-0.05": 0.8},
            "accuracy_ci": [0.9, 0.95],
            "model": "x",
            "confusion_matrix": [[1]],
        }
    )
    assert flat == {
        "robustness.brightnessplus15pct": 0.9,
        "robustness.hue-0.05": 0.8,
        "accuracy_ci.0": 0.9,
        "accuracy_ci.1": 0.95,
    }
