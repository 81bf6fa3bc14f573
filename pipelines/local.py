"""Run the pipeline here, whole, under KFP's local SubprocessRunner, and summarise the run."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from components import home
from pipelines.progress import RunOutput, plain


def _new_run_dir(root: Path, before: set[Path]) -> Path | None:
    created = [p for p in root.iterdir() if p.is_dir() and p not in before]
    return max(created, key=lambda p: p.stat().st_mtime) if created else None


def summarize_run(run_dir: Path) -> dict:
    """Where each artifact of a finished local run is, and each model's headline figures."""
    models: dict[str, dict] = {}
    for metrics_path in sorted(run_dir.rglob("metrics.json")):
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "model" not in metrics or "accuracy" not in metrics:
            continue
        models[metrics["model"]] = {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "saved_model": metrics.get("saved_model"),
            "metrics": str(metrics_path),
        }
    # <task>/<artifact>, and <loop iteration>/<task>/<artifact> inside ParallelFor.
    candidates = [p for p in run_dir.glob("*/*") if not p.parent.name.startswith("for-loop-")]
    candidates += list(run_dir.glob("for-loop-*/*/*"))
    artifacts = {
        str(p.relative_to(run_dir)): str(p)
        for p in sorted(candidates)
        if p.name != "executor_output.json" and not p.name.startswith(".")
    }
    # The promotion's copy carries the version; the gate's is the decision alone.
    decision = _first(run_dir / "promote-op", "decision.json") if (run_dir / "promote-op").is_dir() else None
    decision = decision or _first(run_dir, "decision.json")
    validation = _first(run_dir, "validation.json")
    dedup = _first(run_dir, "dedup.json")
    counts = _first(run_dir, "counts.md")
    return {
        "pipeline_root": str(run_dir),
        "models": models,
        "decision": json.loads(decision.read_text()) if decision else None,
        "validation": _pick(validation, ("success", "images", "valid", "quarantined", "failed_expectations")),
        "dedup": _pick(dedup, ("images", "kept", "exact_pairs", "exact_groups", "near_groups", "conflicts")),
        "split_table": counts.read_text().strip() if counts else None,
        "artifacts": artifacts,
    }


def _first(run_dir: Path, name: str) -> Path | None:
    return next(iter(sorted(run_dir.rglob(name))), None)


def _pick(path: Path | None, keys: tuple[str, ...]) -> dict | None:
    if not path:
        return None
    data = json.loads(path.read_text())
    return {k: data[k] for k in keys if k in data}


KEEP_RUNS = 50  # run folders (log + record) kept under $LEUKOFLOW_HOME/runs; older ones are removed


def _prune_runs(keep: int = KEEP_RUNS) -> None:
    import shutil

    runs = sorted(p for p in home.runs_dir().iterdir() if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _record(path: Path, record: dict) -> None:
    from components import atomic_files

    atomic_files.write_json(path, record)


def last_run() -> dict | None:
    """The newest local run's record (`$LEUKOFLOW_HOME/runs/<id>/run.json`), or None before the first run."""
    runs = home.runs_dir()
    records = sorted(runs.glob("*/run.json")) if runs.is_dir() else []
    for path in reversed(records):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None


@contextlib.contextmanager
def _captured(output: RunOutput):
    """Route the runner's stdout, stderr, warnings and root-logger output through `output` for the run."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.StreamHandler(output)
    # The runner's own format: its task threads swap the root handlers, so either may write a task's lines.
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d - %(levelname)s - %(message)s", datefmt="%H:%M:%S"))
    root.handlers[:] = [handler]
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def run_local(
    data_dir: str | Path,
    profile: str = "quick",
    pipeline_root: str | Path | None = None,
    models: list[str] | None = None,
    weights: dict[str, str] | None = None,
    drift_report: str = "",
    promote: bool = True,
    quiet_stdout: bool = True,
    verbose: bool = False,
    external_ood_dir: str | None = None,
) -> dict:
    """Run the whole pipeline locally; returns {"status", "pipeline_root", "models", "log", ...}.

    The console gets one line per step start and end and a few per training (everything with
    `verbose`), on stderr with `quiet_stdout` so a caller's `--json` output stays one object, else on
    stdout. The full log goes to `$LEUKOFLOW_HOME/runs/<run id>/pipeline.log`, and the run's record
    (status, times, artifacts) to `run.json` beside it, for `leukoflow status`.
    """
    from kfp import local

    from components import settings
    from pipelines.pipeline import leukoflow_pipeline

    data_path = Path(data_dir).resolve()
    root = Path(pipeline_root or home.pipeline_root()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings.profile(profile)  # fail early on an unknown profile
    models = list(models or settings.MODEL_NAMES)
    before = {p for p in root.iterdir() if p.is_dir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)

    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%Y%m%d-%H%M%S-%f")
    run_home = home.runs_dir() / run_id
    run_home.mkdir(parents=True, exist_ok=True)
    log_path, record_path = run_home / "pipeline.log", run_home / "run.json"
    record = {
        "run_id": run_id,
        "status": "RUNNING",
        "started_at": started_at.isoformat(),
        "finished_at": None,
        "profile": profile,
        "data_dir": str(data_path),
        "drift_report": drift_report or None,
        "log": str(log_path),
        "pipeline_root": None,
    }
    _record(record_path, record)
    _prune_runs()

    console = sys.stderr if quiet_stdout else sys.stdout
    started = time.time()
    status, error = "SUCCEEDED", None
    with open(log_path, "w", encoding="utf-8", buffering=1) as log_file:
        output = RunOutput(log_file, console, verbose=verbose)
        output.say(
            f"pipeline started: profile {profile}, models {', '.join(models)}; full log {home.display(log_path)}"
        )
        with _captured(output):
            try:
                leukoflow_pipeline(
                    data_dir=str(data_path),
                    profile=profile,
                    models=models,
                    weights=json.dumps(weights or {}),
                    drift_report=drift_report,
                    promote=promote,
                    external_ood_dir=str(Path(external_ood_dir).resolve())
                    if external_ood_dir
                    else settings.EXTERNAL_OOD_DIR,
                )
            except Exception as exc:  # the runner raises on a failed task; report it, keep the summary
                status, error = "FAILED", f"{type(exc).__name__}: {plain(str(exc))}"
                log_file.write(traceback.format_exc())
            except KeyboardInterrupt:  # the record must not say RUNNING forever
                _record(
                    record_path,
                    {**record, "status": "INTERRUPTED", "finished_at": datetime.now(UTC).isoformat()},
                )
                raise
        failed = output.finish(error)
    run_dir = _new_run_dir(root, before)
    summary = summarize_run(run_dir) if run_dir else {"pipeline_root": None, "models": {}}
    summary.update(
        status=status,
        wall_time_s=round(time.time() - started, 1),
        profile=profile,
        log=str(log_path),
        steps=output.steps,
    )
    if error:
        summary["error"] = error
        summary["failed_steps"] = failed
    decision = summary.get("decision") or {}
    record.update(
        status=status,
        finished_at=datetime.now(UTC).isoformat(),
        wall_time_s=summary["wall_time_s"],
        pipeline_root=summary.get("pipeline_root"),
        error=error,
        failed_steps=failed,
        models={k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"]} for k, v in summary["models"].items()},
        decision={k: decision.get(k) for k in ("promoted", "chosen", "version", "reason")} if decision else None,
    )
    _record(record_path, record)
    return summary
