"""The pusher (TFX's Pusher): a gate decision into the registry, the model store and models.config, all or nothing.

Promotion writes three things that must agree: the MLflow registry version, the model store version and
`models.config`. The order is: (1) an MLflow run and model version with no alias yet (status `pending`;
its number becomes the store version, so one number names the model everywhere), (2) the store version,
(3) `models.config` in TF Serving's two steps, (4) the model card, the aliases and status `promoted`.
If any step fails, everything done so far is undone (config restored from its snapshot, store version
removed, registry version and its run deleted, aliases restored) and the run fails. The manual operations
(move a label, roll back, list) keep the same all-or-nothing rule.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components import atomic_files, home
from components.promote import registry
from components.promote.gate.executor import tag_float, tree_hash, write_decision
from components.promote.gate.policy import Decision
from components.promote.pusher import model_card, model_store

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    """A promotion failed; the model store, models.config and the registry were restored."""


def dvc_data_hash(dvc_file: Path | None = None) -> str:
    """The md5 of `data/` recorded in data.dvc at the repo root ('unknown' if absent)."""
    import yaml

    dvc_file = dvc_file or home.REPO_ROOT / "data.dvc"
    try:
        outs = yaml.safe_load(dvc_file.read_text()).get("outs") or []
        return str(outs[0].get("md5") or "unknown")
    except (OSError, AttributeError, IndexError, yaml.YAMLError):
        return "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=home.REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _train_info(saved_model: str | Path) -> dict[str, Any]:
    path = Path(saved_model).parent / "train.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


REFERENCE_NAMES = ("reference_features.parquet", "reference.parquet", "reference_features.csv", "reference.csv")


def reference_file(reference: str | Path | None) -> Path | None:
    """The drift reference profile: a file, or the first known name in a directory (None if not given)."""
    if reference is None or str(reference) == "":
        return None
    path = Path(reference)
    if path.is_file():
        return path
    for name in REFERENCE_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no reference profile ({', '.join(REFERENCE_NAMES)}) at {path}")


def _run_undo(steps: list[tuple[str, Callable[[], None]]]) -> list[str]:
    """Run every undo step even if one fails; returns what could not be undone."""
    failed = []
    for name, fn in steps:
        try:
            fn()
        except Exception as exc:  # keep undoing the rest; report every failure
            log.error("could not undo %s: %s", name, exc)
            failed.append(f"{name}: {exc}")
    return failed


def first_label(label: str, config_path: str | Path | None = None) -> str:
    """The label a promotion really gets: `canary` becomes `stable` while nothing is stable yet.

    A first version has no champion to compare with on live traffic, and a canary alone would leave clients
    that ask for `stable` without an answer, so the first promotion serves as stable at once.
    """
    if label != "canary":
        return label
    state = model_store.read_state(config_path)
    return label if state is not None and "stable" in state.labels else "stable"


def apply_decision(
    decision: Decision,
    out_dir: str | Path,
    label: str = "canary",
    pipeline_run_id: str = "",
    base: str | Path | None = None,
    config_path: str | Path | None = None,
    registry_uri: str | None = None,
    between: Callable[[model_store.ServingState, int], None] | None = None,
    reference: str | Path | None = None,
    drift_report: str = "",
) -> Decision:
    """Write registry, model store and models.config for a promoted decision, all or nothing.

    `reference` (the training split's feature profile) is stored in the version as
    `assets.extra/reference_features.<ext>` for the drift monitor and logged to the registry run;
    `drift_report` (the report that triggered this retraining, if any) is recorded as a tag.
    """
    if not decision.promoted:
        raise PromotionError(decision.summary)
    if label not in model_store.LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(model_store.LABELS)}")
    out_dir = Path(out_dir)
    write_decision(decision, out_dir)  # the registry run logs decision.md
    saved_model = Path(decision.chosen_saved_model)
    metrics = json.loads((Path(decision.chosen_source) / "metrics.json").read_text())
    train = _train_info(saved_model)
    provenance = {
        "data_hash": dvc_data_hash(),
        "git_commit": git_commit(),
        "pipeline_run_id": pipeline_run_id or "manual",
        "split_hash": decision.split_hash or "unknown",
    }
    tags = {
        **provenance,
        "model": decision.chosen,
        "macro_f1": metrics.get("macro_f1"),
        "accuracy": metrics.get("accuracy"),
        "gate_decision": decision.summary[:4900],
        "saved_model_sha256": tree_hash(saved_model),
        "status": "pending",
    }
    params = {
        "model": decision.chosen,
        "config": train.get("config") or {},
        "weights_used": train.get("weights_used", "unknown"),
        "epochs_run": train.get("epochs_run", "unknown"),
    }
    ref = reference_file(reference)
    extras = {f"assets.extra/reference_features{ref.suffix}": ref} if ref else {}
    if drift_report:
        tags["drift_report"] = str(drift_report)
    config_path = Path(config_path or home.models_config_path())
    step = "start"
    with model_store.store_lock(base):
        label = first_label(label, config_path)
        model_store.clean_stale_temporaries(base)
        config_snap = model_store.snapshot_config(config_path)
        model_store.read_models_config(config_path)  # refuse to start on an unreadable config
        reg_snap = registry.snapshot(uri=registry_uri)
        version = run_id = None
        wrote_store = False
        try:
            step = "registry version"
            version, run_id = registry.create_version(
                saved_model,
                metrics,
                params,
                tags,
                artifacts=[out_dir / "decision.md"] + ([ref] if ref else []),
                uri=registry_uri,
                description=f"{decision.chosen}: {decision.reason}"[:4000],
            )
            step = "model store"
            version_dir = model_store.write_version(saved_model, version, base, extras=extras)
            wrote_store = True
            step = "models.config"
            model_store.move_label(label, version, config_path, base, between=between)
            step = "model card"
            decision.version, decision.label = version, label
            card_path = out_dir / "model_card.md"
            atomic_files.write_text(
                card_path,
                model_card.render(
                    version,
                    metrics,
                    train,
                    provenance,
                    decision.summary,
                    model_card.low_confidence_threshold(saved_model),
                ),
            )
            c = registry.client(registry_uri)
            c.log_artifact(run_id, str(card_path))
            c.log_artifact(run_id, str(write_decision(decision, out_dir)[1]))
            run = c.get_run(run_id)
            step = "registry aliases"
            registry.set_version_tags(
                version,
                {
                    "model_card": f"{run.info.artifact_uri}/model_card.md",
                    "model_path": str(version_dir),
                    "serving_version": str(version),
                    "status": "promoted",
                    "low_confidence_threshold": str(model_card.low_confidence_threshold(saved_model)),
                    **({"reference_profile": str(version_dir / next(iter(extras)))} if extras else {}),
                },
                uri=registry_uri,
            )
            registry.assign_label(version, label, uri=registry_uri)
        except BaseException as exc:
            log.error("promotion failed at %s: %s; restoring the previous state", step, exc)
            undo = [("models.config", lambda: model_store.restore_config(config_snap, config_path))]
            if wrote_store and version is not None:
                undo.append(("model store", lambda: model_store.remove_version(version, base)))
            if version is not None:
                undo.append(("registry version", lambda: registry.delete_version(version, run_id, uri=registry_uri)))
            undo.append(("registry aliases", lambda: registry.restore(reg_snap, uri=registry_uri)))
            failed = _run_undo(undo)
            decision.version = decision.label = None
            state = (
                "the model store, models.config and the registry keep their previous state"
                if not failed
                else f"UNDO INCOMPLETE ({'; '.join(failed)}): check `leukoflow registry list` and models.config"
            )
            raise PromotionError(f"promotion failed at step '{step}': {exc}; {state}") from exc
    write_decision(decision, out_dir)
    return decision


def wait_between_steps(step_wait_s: float, serving_rest: str | None) -> Callable[[model_store.ServingState, int], None]:
    """Between the two models.config steps: pause, then wait for a running server to load the version."""
    rest = model_store.default_serving_rest() if serving_rest is None else serving_rest
    return model_store.between_steps(step_wait_s, rest)


def list_models(registry_uri: str | None = None, config_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Registry versions joined with the labels and served versions of models.config."""
    state = model_store.read_state(config_path)
    labels_of: dict[int, list[str]] = {}
    for lab, v in (state.labels if state else {}).items():
        labels_of.setdefault(v, []).append(lab)
    out = []
    for v in registry.versions(uri=registry_uri):
        t = v["tags"]
        labs = sorted(labels_of.get(v["version"], []))
        out.append(
            {
                "version": v["version"],
                "aliases": v["aliases"],
                "label": labs[0] if labs else None,
                "labels": labs,
                "served": bool(state and v["version"] in state.versions),
                "model": t.get("model"),
                "macro_f1": tag_float(t.get("macro_f1")),
                "accuracy": tag_float(t.get("accuracy")),
                "model_path": t.get("model_path"),
                "status": t.get("status"),
                "model_card": t.get("model_card"),
                "split_hash": t.get("split_hash"),
                "data_hash": t.get("data_hash"),
                "git_commit": t.get("git_commit"),
                "pipeline_run_id": t.get("pipeline_run_id"),
            }
        )
    return out


def _set_label(
    version: int,
    label: str,
    registry_uri: str | None,
    config_path: str | Path | None,
    history: list[int] | None,
    between: Callable | None,
    server: str | None = None,
) -> str:
    """Move a label in models.config and the matching alias in the registry, together or not at all.

    With `server` (gRPC HOST:PORT) each config step is sent to it and the move is confirmed by the label
    answering with the version; returns what the running server was told.
    """
    from components.promote import server_reload

    config_path = Path(config_path or home.models_config_path())
    step_hook = between
    if server:

        def step_hook(step1: Any, v: int) -> None:  # step 1 (the version loaded beside) is served before step 2
            if between is not None:
                between(step1, v)
            server_reload.tell_server(server, config_path, v)

    with model_store.store_lock():
        config_snap = model_store.snapshot_config(config_path)
        reg_snap = registry.snapshot(uri=registry_uri)
        try:
            model_store.move_label(label, version, config_path, between=step_hook)
            registry.assign_label(version, label, uri=registry_uri, history=history)
            if server:
                server_reload.tell_server(server, config_path, version, label)
        except BaseException as exc:
            failed = _run_undo(
                [
                    ("models.config", lambda: model_store.restore_config(config_snap, config_path)),
                    ("registry aliases", lambda: registry.restore(reg_snap, uri=registry_uri)),
                ]
            )
            state = "previous state kept" if not failed else f"UNDO INCOMPLETE ({'; '.join(failed)})"
            raise PromotionError(f"moving label {label} to version {version} failed: {exc}; {state}") from exc
    return f"server {server} answers {label} with version {version}" if server else server_reload.NOT_TOLD


def promote_version(
    version: int,
    label: str,
    registry_uri: str | None = None,
    config_path: str | Path | None = None,
    step_wait_s: float = 0.0,
    serving_rest: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Manual step: put `label` (stable|canary) on a registered version that is in the model store."""
    record = registry.get_version(version, uri=registry_uri)
    if record is None:
        raise ValueError(f"version {version} is not in the registry")
    if record["tags"].get("status") != "promoted" or not model_store.version_path(version).is_dir():
        raise ValueError(f"version {version} is not a complete version in the model store")
    told = _set_label(
        version, label, registry_uri, config_path, None, wait_between_steps(step_wait_s, serving_rest), server
    )
    return {
        "version": version,
        "label": label,
        "aliases": registry.get_aliases(uri=registry_uri),
        "serving": model_store.read_state(config_path).to_dict(),
        "server": told,
    }


def rollback(
    registry_uri: str | None = None,
    config_path: str | Path | None = None,
    step_wait_s: float = 0.0,
    serving_rest: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Stable back to the previous champion: models.config label and registry alias together."""
    history = registry.champion_history(uri=registry_uri)
    if len(history) < 2:
        raise ValueError("no previous champion to roll back to" + (f" (only version {history[0]})" if history else ""))
    current, previous = history[-1], history[-2]
    if not model_store.version_path(previous).is_dir():
        raise ValueError(f"previous champion version {previous} is no longer in the model store")
    told = _set_label(
        previous,
        "stable",
        registry_uri,
        config_path,
        history[:-1],
        wait_between_steps(step_wait_s, serving_rest),
        server,
    )
    registry.set_version_tags(current, {"rolled_back": "true"}, uri=registry_uri)
    return {
        "rolled_back_from": current,
        "version": previous,
        "label": "stable",
        "aliases": registry.get_aliases(uri=registry_uri),
        "serving": model_store.read_state(config_path).to_dict(),
        "server": told,
    }
