"""Fixtures for the promotion tests: a fresh LEUKOFLOW_HOME per test, tiny SavedModels, a split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures import promote_candidates as H


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory) -> Path:
    """An initialised MLflow sqlite db (schema migrations run once, then copied per test)."""
    from components.promote import registry

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    registry.client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, _template_db) -> Path:
    """Each test gets its own model store, models.config and registry."""
    h = tmp_path / "home"
    h.mkdir()
    shutil.copy(_template_db, h / "mlflow.db")
    monkeypatch.setenv("LEUKOFLOW_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LEUKOFLOW_SERVING_REST", "")  # never wait on a server someone runs on this machine
    return h


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny SavedModels from the trainer's export: good, worse (Benign/Pro swapped), broken (no softmax), no warmup."""
    root = tmp_path_factory.mktemp("models")
    worse = H.GOOD_W.copy()
    worse[:, [0, 3]] = worse[:, [3, 0]]  # Benign and Pro swapped
    out = {}
    for name, kw in {"good": {}, "worse": {"weights": worse}, "broken": {"broken": True}}.items():
        train_dir = root / f"train-{name}"
        train_dir.mkdir()
        out[name] = H.export_tiny(train_dir / "saved_model", **kw)
    # copies of "good": a distinct artefact that behaves the same, and one without its warmup file
    for name, change in {
        "good2": lambda d: (d / "assets.extra" / "note.txt").write_text("retrained"),
        "nowarmup": lambda d: (d / "assets.extra" / "tf_serving_warmup_requests").unlink(),
    }.items():
        out[name] = root / f"train-{name}" / "saved_model"
        shutil.copytree(out["good"], out[name])
        change(out[name])
    for name, path in out.items():
        (path.parent / "train.json").write_text(
            json.dumps(
                {
                    "model": name,
                    "config": {"name": name, "image_size": H.SIZE, "epochs": 1},
                    "weights_used": "none",
                    "epochs_run": 1,
                }
            )
        )
    return out


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory) -> Path:
    return H.make_split(tmp_path_factory.mktemp("split") / "split")


@pytest.fixture(scope="session")
def other_split_dir(tmp_path_factory) -> Path:
    return H.make_split(tmp_path_factory.mktemp("split2") / "split", seed=1)
