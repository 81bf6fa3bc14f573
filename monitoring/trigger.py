"""The retraining trigger: one drift episode starts one pipeline run, and the record survives restarts.

An *episode* is a run of consecutive "drift" verdicts against the same reference
(i.e. the same served model); a "no_drift" verdict ends it, "insufficient_data"
leaves it as it is. A run is started when a drift verdict arrives, the episode
has not started one yet, and at least `cooldown` has passed since the last run
(so a flapping verdict cannot start a run every hour either).

Where the run goes: with a KFP host (`--kfp-host` or $KFP_HOST), the compiled
pipeline package is submitted with `kfp.Client(host).create_run_from_pipeline_package`
(argument `drift_report` = the report's path); without one, the pipeline runs here
under the local runner (`pipelines.local.run_local`).

State: JSON at `$LEUKOFLOW_HOME/monitoring/trigger_state.json`, written atomically
(temp + rename) under an exclusive lock, so two checks at once cannot both start a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from components import atomic_files

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN = timedelta(hours=24)
DEFAULT_EXPERIMENT = "leukoflow-retraining"
KFP_HOST_ENV = "KFP_HOST"
KFP_NAMESPACE_ENV = "KFP_NAMESPACE"  # multi-user KFP: the profile namespace runs are created in
MAX_RUNS_KEPT = 100

# Runs the whole pipeline here and returns its summary: runner(data_dir=, profile=, drift_report=, **arguments).
# The pipelines layer hands it in (pipelines/cli.py passes pipelines.local.run_local): monitoring sits below
# pipelines and never imports the runner itself (docs/architecture.md).
LocalRunner = Callable[..., dict[str, Any]]


def state_path() -> Path:
    """$LEUKOFLOW_HOME/monitoring/trigger_state.json"""
    from components.home import home

    return home() / "monitoring" / "trigger_state.json"


def default_package() -> Path:
    """Where `make compile` / `leukoflow pipeline compile` writes the pipeline package."""
    from components.home import home

    return home() / "pipeline.yaml"


@dataclass
class TriggerConfig:
    """Where a retraining run goes and how often one may start."""

    host: str | None = None  # KFP API endpoint; None runs the pipeline locally
    package: str | None = None  # compiled pipeline (cluster); default $LEUKOFLOW_HOME/pipeline.yaml
    experiment: str = DEFAULT_EXPERIMENT
    namespace: str | None = field(default_factory=lambda: os.environ.get(KFP_NAMESPACE_ENV) or None)
    arguments: dict[str, Any] = field(default_factory=dict)  # extra pipeline parameters
    data_dir: str | None = None  # local runs: the dataset
    profile: str = "quick"  # local runs: training profile
    cooldown: timedelta = DEFAULT_COOLDOWN
    state_file: Path | None = None
    local_runner: LocalRunner | None = None  # local runs: the pipeline runner, given by the layer above
    cases_dir: str | None = None  # when set, drift starts a run only for newly committed cases (cases/retraining.py)
    kept_dir: str | None = None  # the server's --keep_referred_images folder, to count the images awaiting review

    @property
    def mode(self) -> str:
        return "kfp" if self.host else "local"


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts) if ts else None


def empty_state() -> dict[str, Any]:
    return {"episode": None, "last_trigger": None, "last_check": None, "runs": []}


def load_state(path: Path) -> dict[str, Any]:
    """The saved state, or an empty one; a corrupt file is an error (never silently reset)."""
    if not path.exists():
        return empty_state()
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"trigger state {path} is not valid JSON ({exc}); fix or delete it") from exc
    return {**empty_state(), **state}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: temp file in the same folder, fsync, rename."""
    atomic_files.write_text(path, json.dumps(state, indent=2, default=str), fsync=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock beside the state file (held only while deciding and recording)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update_episode(state: dict[str, Any], result: dict[str, Any], now: datetime) -> None:
    status = result.get("status")
    reference = str(result.get("reference") or "")
    state["last_check"] = {"at": now.isoformat(), "status": status, "report_json": result.get("report_json")}
    episode = state.get("episode")
    if status == "no_drift":
        state["episode"] = None
    elif status == "drift":
        if episode is None or episode.get("reference") != reference:
            state["episode"] = {"started_at": now.isoformat(), "reference": reference, "checks": 0, "run": None}
        state["episode"]["checks"] += 1
        state["episode"]["last_drift_at"] = now.isoformat()


def _decide(state: dict[str, Any], config: TriggerConfig, now: datetime) -> tuple[bool, str]:
    episode = state.get("episode")
    if episode is None:
        return False, "no drift episode"
    if episode.get("run"):
        return False, f"this drift episode (since {episode['started_at']}) already started run {episode['run']}"
    last = state.get("last_trigger")
    if last and _parse(last.get("at")) and now - _parse(last["at"]) < config.cooldown:
        wait = config.cooldown - (now - _parse(last["at"]))
        return False, f"cooldown: the last run started {last['at']}; next allowed in {wait}"
    return True, "drift episode without a run"


def submit_kfp(config: TriggerConfig, report_json: str) -> dict[str, Any]:
    """Submit the compiled pipeline to KFP with the drift report as a parameter."""
    import kfp

    package = Path(config.package or default_package())
    if not package.is_file():
        raise FileNotFoundError(f"pipeline package not found: {package}; run `leukoflow pipeline compile` first")
    client = kfp.Client(host=config.host)
    stamp = _now().strftime("%Y%m%d-%H%M%S")
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments={**config.arguments, "drift_report": report_json},
        run_name=f"retrain-on-drift-{stamp}",
        experiment_name=config.experiment,
        namespace=config.namespace,
    )
    return {"mode": "kfp", "host": config.host, "run_id": getattr(result, "run_id", None), "package": str(package)}


def run_locally(config: TriggerConfig, report_json: str) -> dict[str, Any]:
    """Run the whole pipeline here with the local runner (blocks until it ends)."""
    if config.local_runner is None:
        raise RuntimeError(
            "no local pipeline runner was given: local retraining starts from the `leukoflow` CLI "
            "(which passes pipelines.local.run_local); elsewhere give a KFP host"
        )
    from components.home import default_data_dir

    data_dir = config.data_dir or str(default_data_dir())
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data directory not found for the local retraining run: {data_dir}")
    summary = config.local_runner(
        data_dir=data_dir, profile=config.profile, drift_report=report_json, **config.arguments
    )
    return {
        "mode": "local",
        "status": summary.get("status"),
        "pipeline_root": summary.get("pipeline_root"),
        "error": summary.get("error"),
    }


def maybe_trigger(
    result: dict[str, Any], config: TriggerConfig | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Record this verdict and start a retraining run when the rules above allow; returns what happened."""
    config = config or TriggerConfig()
    path = Path(config.state_file or state_path())
    now = now or _now()
    report_json = str(result.get("report_json") or "")
    with locked(path):
        state = load_state(path)
        _update_episode(state, result, now)
        go, reason = _decide(state, config, now)
        cases_hash = None
        if go and config.cases_dir:  # a run on the data the last run used could not differ from it
            from components.cases.retraining import rerun_gate

            gate = rerun_gate(config.cases_dir, config.kept_dir, (state.get("last_trigger") or {}).get("cases_hash"))
            go, reason, cases_hash = gate.start, gate.reason, gate.cases_hash
        run_key = now.strftime("%Y%m%dT%H%M%S.%fZ")
        previous_trigger = state.get("last_trigger")
        if go:
            # Claim the episode before starting: a concurrent check sees it and waits out this run.
            state["episode"]["run"] = run_key
            state["last_trigger"] = {
                "at": now.isoformat(),
                "run": run_key,
                "mode": config.mode,
                "status": "starting",
                "drift_report": report_json,
                "cases_hash": cases_hash,
            }
        save_state(path, state)
    if not go:
        log.info("retraining not triggered: %s", reason)
        return {"triggered": False, "reason": reason, "state_file": str(path)}

    log.warning("drift: starting a retraining run (%s) with drift_report=%s", config.mode, report_json)
    error = None
    try:
        run = submit_kfp(config, report_json) if config.mode == "kfp" else run_locally(config, report_json)
    except Exception as exc:  # record and release the episode so the next check retries
        error = f"{type(exc).__name__}: {exc}"
        run = {"mode": config.mode, "error": error}
        log.error("retraining run could not start: %s", error)
    with locked(path):
        state = load_state(path)
        entry = {"key": run_key, "at": now.isoformat(), "drift_report": report_json, **run, "started": error is None}
        state["runs"] = (state.get("runs") or [])[-(MAX_RUNS_KEPT - 1) :] + [entry]
        if error is not None:
            if state.get("episode") and state["episode"].get("run") == run_key:
                state["episode"]["run"] = None
            if (state.get("last_trigger") or {}).get("run") == run_key:
                state["last_trigger"] = previous_trigger  # a run that never started does not start a cooldown
        else:
            state["last_trigger"] = {**(state.get("last_trigger") or {}), **run, "status": "started"}
        save_state(path, state)
    out = {
        "triggered": error is None,
        "reason": reason if error is None else error,
        "run": run,
        "state_file": str(path),
    }
    return out
