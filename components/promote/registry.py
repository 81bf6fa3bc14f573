"""The MLflow model registry: one registered model, one version per promotion, aliases champion/challenger.

sqlite under LEUKOFLOW_HOME by default (`components.home.registry_uri()`; `MLFLOW_TRACKING_URI` overrides).
Each version has an MLflow run holding its flattened metrics, model-config params, provenance tags (DVC data
hash, git commit, pipeline run id, split hash, gate decision), the model card and decision as artifacts, and
the SavedModel directory as the `saved_model` artifact. The version's source is that artifact's URI
(`create_model_version` on a plain directory): no MLflow flavour, since the served artifact is the
TF-Serving SavedModel itself and `mlflow.tensorflow` would re-save it as a Keras model with its own layout.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from components import home, settings

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "leukoflow-promotion"
ALIASES = {"stable": "champion", "canary": "challenger"}
HISTORY_TAG = "champion_history"
_BAD_KEY = re.compile(r"[^\w.\-/ :]")


def _quiet() -> None:
    """MLflow and alembic log schema migrations and hints to stderr at INFO; keep only warnings."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(uri: str | None = None):
    """An MlflowClient on the registry URI (tracking and registry on the same store)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow import MlflowClient

    _quiet()  # after the import: mlflow sets its logger's level when it is imported

    uri = uri or home.registry_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(c, uri: str) -> str:
    exp = c.get_experiment_by_name(EXPERIMENT_NAME)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        location = (home.home() / "mlartifacts").as_uri()  # not ./mlruns under whatever the CWD is
    return c.create_experiment(EXPERIMENT_NAME, artifact_location=location)


def ensure_model(c, name: str = settings.REGISTERED_MODEL_NAME) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(
            name,
            description="Acute lymphoblastic leukemia stage classifier "
            "(Benign, Early, Pre, Pro) served by TF Serving as 'leukemia'.",
        )


def metric_key(key: str) -> str:
    """A metrics.json path as a valid MLflow metric name ('+' -> 'plus', '%' -> 'pct')."""
    return _BAD_KEY.sub("_", key.replace("+", "plus").replace("%", "pct"))


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of metrics.json as name -> float (lists indexed: accuracy_ci.0, .1)."""
    out: dict[str, float] = {}
    items = metrics.items() if isinstance(metrics, dict) else enumerate(metrics)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[metric_key(key)] = float(v)
        elif isinstance(v, (dict, list)) and key != "confusion_matrix":
            out.update(flatten_metrics(v, key + "."))
    return out


def _flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[metric_key(f"{prefix}{k}")] = str(v)[:6000]
    return out


def create_version(
    saved_model_dir: str | Path,
    metrics: dict[str, Any],
    params: dict[str, Any],
    tags: dict[str, str],
    artifacts: list[str | Path],
    description: str = "",
    name: str = settings.REGISTERED_MODEL_NAME,
    uri: str | None = None,
) -> tuple[int, str]:
    """Log a run (metrics, params, tags, artifacts, the SavedModel) and register it; returns (version, run_id)."""
    from mlflow.entities import Metric, Param

    uri = uri or home.registry_uri()
    c = client(uri)
    ensure_model(c, name)
    run = c.create_run(
        _experiment_id(c, uri),
        run_name=f"promote-{tags.get('model', 'model')}",
        tags={k: str(v) for k, v in tags.items()},
    )
    run_id = run.info.run_id
    try:
        import time

        now = int(time.time() * 1000)
        flat = flatten_metrics(metrics)
        metric_list = [Metric(k, v, now, 0) for k, v in flat.items()]
        param_list = [Param(k, v) for k, v in _flat_params(params).items()]
        for i in range(0, max(len(metric_list), len(param_list)), 100):  # log_batch limits
            c.log_batch(run_id, metrics=metric_list[i : i + 100], params=param_list[i : i + 100])
        c.log_artifacts(run_id, str(saved_model_dir), artifact_path="saved_model")
        for art in artifacts:
            c.log_artifact(run_id, str(art))
        c.set_terminated(run_id, "FINISHED")
        source = f"{run.info.artifact_uri}/saved_model"
        version_tags = {k: str(v) for k, v in tags.items()}
        mv = c.create_model_version(name, source=source, run_id=run_id, tags=version_tags, description=description)
    except BaseException:
        _delete_run(c, run_id)
        raise
    log.info("registry: %s version %s (run %s)", name, mv.version, run_id)
    return int(mv.version), run_id


def _delete_run(c, run_id: str) -> None:
    try:
        c.delete_run(run_id)
    except Exception as exc:  # best effort: an orphan run is harmless, an orphan version is not
        log.warning("could not delete run %s: %s", run_id, exc)


def delete_version(
    version: int, run_id: str | None = None, name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None
) -> None:
    """Remove a version (and its run) created by a promotion that failed later."""
    c = client(uri)
    c.delete_model_version(name, str(version))
    if run_id:
        _delete_run(c, run_id)


def set_version_tags(
    version: int, tags: dict[str, str], name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None
) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, str(version), k, str(v))


def get_aliases(name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> dict[str, int]:
    """alias -> version (empty when the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        rm = c.get_registered_model(name)
    except MlflowException:
        return {}
    return {k: int(v) for k, v in (rm.aliases or {}).items()}


def champion_history(name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> list[int]:
    """Versions that have been champion, oldest first (the last one is the current champion)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        rm = c.get_registered_model(name)
    except MlflowException:
        return []
    return [int(v) for v in json.loads((rm.tags or {}).get(HISTORY_TAG, "[]"))]


def snapshot(name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> dict[str, Any]:
    """Aliases and champion history, to restore if a promotion fails after touching them."""
    return {"aliases": get_aliases(name, uri), "history": champion_history(name, uri)}


def restore(snap: dict[str, Any], name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> None:
    """Put aliases and champion history back as they were in `snap`."""
    c = client(uri)
    current = get_aliases(name, uri)
    for alias in current:
        if alias not in snap["aliases"]:
            c.delete_registered_model_alias(name, alias)
    for alias, version in snap["aliases"].items():
        if current.get(alias) != version:
            c.set_registered_model_alias(name, alias, str(version))
    if current or snap["history"] or snap["aliases"]:
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(snap["history"]))


def assign_label(
    version: int,
    label: str,
    name: str = settings.REGISTERED_MODEL_NAME,
    uri: str | None = None,
    history: list[int] | None = None,
) -> None:
    """Move the alias of a serving label (stable -> champion, canary -> challenger) to `version`.

    A new champion is appended to the champion history (or the history is set to `history` for rollbacks);
    a challenger that becomes champion loses the challenger alias.
    """
    if label not in ALIASES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(ALIASES)}")
    c = client(uri)
    alias = ALIASES[label]
    c.set_registered_model_alias(name, alias, str(version))
    if alias == "champion":
        if history is None:
            history = [v for v in champion_history(name, uri) if v != version] + [version]
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        if get_aliases(name, uri).get("challenger") == version:
            c.delete_registered_model_alias(name, "challenger")


def versions(name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> list[dict[str, Any]]:
    """Every version: number, aliases, tags, source, run id (newest first)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        rm = c.get_registered_model(name)
    except MlflowException:
        return []
    by_version: dict[int, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        by_version.setdefault(int(v), []).append(alias)
    out = []
    for mv in c.search_model_versions(f"name='{name}'"):
        v = int(mv.version)
        out.append(
            {
                "version": v,
                "aliases": sorted(by_version.get(v, [])),
                "tags": dict(mv.tags or {}),
                "source": mv.source,
                "run_id": mv.run_id,
                "created_ms": mv.creation_timestamp,
            }
        )
    return sorted(out, key=lambda d: -d["version"])


def get_version(
    version: int, name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None
) -> dict[str, Any] | None:
    return next((v for v in versions(name, uri) if v["version"] == int(version)), None)


def champion(name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> dict[str, Any] | None:
    """The champion version's record (with its tags), or None before the first promotion."""
    version = get_aliases(name, uri).get("champion")
    return None if version is None else get_version(version, name, uri)


def max_version(name: str = settings.REGISTERED_MODEL_NAME, uri: str | None = None) -> int:
    return max((v["version"] for v in versions(name, uri)), default=0)
