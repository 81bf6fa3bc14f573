"""Shared fixtures: synthetic image sets that stand in for the real data (no ../shared, no network)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so tests can `from fixtures.synthetic import ...`
    sys.path.insert(0, str(TESTS_DIR))

from fixtures.synthetic import make_synthetic_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _leukoflow_home(tmp_path_factory, monkeypatch):
    """Every test's runs land in a temporary LEUKOFLOW_HOME, never in the repo's .leukoflow/."""
    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path_factory.getbasetemp() / "leukoflow-home"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict:
    """The synthetic set with every defect (duplicates, corrupt, grayscale, RGBA, cross-label). Read-only."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return make_synthetic_dataset(root, per_class=12, size=32, seed=0)


@pytest.fixture(scope="session")
def clean_synthetic_data(tmp_path_factory) -> dict:
    """Only clean, unique, learnable images (no duplicates or defects). Read-only."""
    root = tmp_path_factory.mktemp("synthetic-clean") / "data"
    return make_synthetic_dataset(root, per_class=12, size=32, seed=1, defects=False)


@pytest.fixture(scope="session")
def calibrated_export(tmp_path_factory) -> Path:
    """One exported version of the project's tiny cnn with the calibration outputs (ood_score, refer, ...).

    Trained, calibrated and exported once per session (~20 s on one core); copy it into a model base. Read-only.
    """
    from fixtures.calibrated_model import export_calibrated

    return export_calibrated(tmp_path_factory.mktemp("calibrated") / "leukemia" / "1")


@pytest.fixture(scope="session")
def exported_versions(tmp_path_factory) -> dict[int, Path]:
    """Three exported versions of the serving tests' tiny model (differing outputs), built once per session
    for the serving and reliability tests; copy them into a model base. Read-only."""
    from fixtures.serving_model import export_tiny_model

    root = tmp_path_factory.mktemp("exports")
    return {v: export_tiny_model(root / str(v), shift=float(v - 1)) for v in (1, 2, 3)}


@pytest.fixture(scope="session")
def quadrant_model_dir(tmp_path_factory) -> Path:
    """`<base>/leukemia/1/`: a tiny model trained to read only the top-left quadrant's patch, with the Keras
    copy Grad-CAM needs; built once per session for the page, reliability and browser tests. Read-only."""
    from fixtures.quadrant_model import export, train_quadrant_model

    version_dir = tmp_path_factory.mktemp("page-models") / "leukemia" / "1"
    return export(train_quadrant_model(), version_dir, threshold=0.6)
