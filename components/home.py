"""One home for local state: everything runs produce lives under it.

`.leukoflow/` at the repository root by default, `LEUKOFLOW_HOME` when set.
Files under `serving/` and `infra/` are configuration that runs never rewrite.
"""

from __future__ import annotations

import os
import re
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
    """TF Serving's model base directory: `<model_base>/leukemia/<version>/` (`LEUKOFLOW_MODEL_BASE` overrides).

    On a cluster the promote step sets it to the model-store volume's mount, the path TF Serving mounts it at.
    """
    return Path(os.environ.get("LEUKOFLOW_MODEL_BASE") or home() / "models")


def models_config_path() -> Path:
    """The `models.config` (ModelServerConfig text proto) the server reads (`LEUKOFLOW_MODELS_CONFIG` overrides)."""
    return Path(os.environ.get("LEUKOFLOW_MODELS_CONFIG") or home() / "serving" / "models.config")


def registry_uri() -> str:
    """MLflow tracking/registry URI: `MLFLOW_TRACKING_URI`, or sqlite under home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def request_log_dir() -> Path:
    """Rotating request logs written by serving and read by the drift monitor."""
    return home() / "requests"


def runs_dir() -> Path:
    """One folder per local pipeline run: its full log and its record (read by `leukoflow status`)."""
    return home() / "runs"


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


HOME_TOKEN = "$LEUKOFLOW_HOME"
_ABSOLUTE = re.compile(r"(?<![\w.~$/])/(?:[\w.@+-]+/)*[\w.@+-]+")


def display(path: str | Path) -> str:
    """`path` as a person should read it: relative to the repository, else under `$LEUKOFLOW_HOME`.

    Human output and generated docs use this so they never carry one machine's absolute paths.
    A path outside both is returned unchanged.
    """
    resolved = Path(path).expanduser().resolve()
    state = Path(os.environ.get("LEUKOFLOW_HOME") or REPO_ROOT / ".leukoflow").resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return str(resolved.relative_to(REPO_ROOT)) or "."
    if resolved.is_relative_to(state):
        inner = resolved.relative_to(state)
        return HOME_TOKEN if inner == Path() else f"{HOME_TOKEN}/{inner}"
    return str(path)


def display_text(text: str) -> str:
    """`text` with each absolute path under the repository or the state home made relative (see `display`)."""
    return _ABSOLUTE.sub(lambda m: display(m.group(0)), text)
