"""One home for local state: everything runs produce lives under it.

`.leukoflow/` at the repository root by default, `LEUKOFLOW_HOME` when set.
Files under `serving/` and `infra/` are configuration that runs never rewrite.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The state directory, created on first use."""
    path = Path(os.environ.get("LEUKOFLOW_HOME") or REPO_ROOT / ".leukoflow").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pipeline_root() -> Path:
    """Where KFP local runs keep their artifacts."""
    return home() / "pipeline-root"


def model_base() -> Path:
    """TF Serving's model base directory: `<model_base>/leukemia/<version>/`."""
    return home() / "models"


def models_config_path() -> Path:
    """The `models.config` (ModelServerConfig text proto) the server reads."""
    return home() / "serving" / "models.config"


def registry_uri() -> str:
    """MLflow tracking/registry URI: `MLFLOW_TRACKING_URI`, or sqlite under home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def request_log_dir() -> Path:
    """Rotating request logs written by serving and read by the drift monitor."""
    return home() / "requests"


def reports_dir() -> Path:
    """Reports (drift, gate decisions) produced outside a pipeline run."""
    return home() / "reports"


def default_data_dir() -> Path:
    """Where `dvc pull` puts the dataset."""
    return REPO_ROOT / "data"


def keras_home() -> Path:
    """Keras's cache (`$KERAS_HOME`, where `make weights` puts the offline ImageNet files): home/keras by default."""
    return Path(os.environ.get("KERAS_HOME") or home() / "keras")


def use_keras_home() -> Path:
    """Point Keras's standard weight cache at keras_home(); Keras reads KERAS_HOME once, at import."""
    path = keras_home()
    os.environ.setdefault("KERAS_HOME", str(path))
    return path
