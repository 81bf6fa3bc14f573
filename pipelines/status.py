"""`leukoflow status`: what is served, since when, was there drift, and what ran last, in one answer.

Reads only: models.config and the model store (components/promote/pusher/model_store.py), the registry
(components/promote/registry.py), the last local pipeline run's record (pipelines/local.py), the newest drift
report (monitoring/cli.py writes them under $LEUKOFLOW_HOME/reports/drift/), the retraining trigger's state
(monitoring/trigger.py) and the request log (monitoring/request_log.py). Exits 1 when a served label points
at a missing version or when the registry and the model store disagree.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from components import home, settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)

REQUEST_WINDOW = timedelta(hours=24)


def _now() -> datetime:
    return datetime.now(UTC)


def _age(then: datetime | str | None, now: datetime) -> str | None:
    """'3 h 12 min' style, or None."""
    if then is None:
        return None
    if isinstance(then, str):
        try:
            then = datetime.fromisoformat(then)
        except ValueError:
            return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{seconds} s"


def _store_versions(base_path: Path) -> list[int]:
    """Complete versions in a model base path (a version counts once its saved_model.pb is there)."""
    if not base_path.is_dir():
        return []
    return sorted(
        int(p.name) for p in base_path.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


def serving_section() -> dict[str, Any]:
    """models.config's entry for our model, with the versions the model store holds."""
    from components.promote.pusher import model_store

    config_path = home.models_config_path()
    state = model_store.read_state(config_path)
    base = Path(state.base_path) if state and state.base_path else model_store.model_dir()
    return {
        "name": settings.SERVED_MODEL_NAME,
        "models_config": str(config_path),
        "configured": state is not None,
        "base_path": str(base),
        "versions": list(state.versions) if state else [],
        "labels": dict(state.labels) if state else {},
        "store_versions": _store_versions(base),
    }


def registry_section(now: datetime) -> dict[str, Any]:
    """Registered versions, and the champion and challenger with their figures and age."""
    uri = home.registry_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        rows: list[dict[str, Any]] = []  # no registry yet: do not create one just to look
    else:
        from components.promote import registry

        rows = registry.versions(uri=uri)

    def describe(alias: str) -> dict[str, Any] | None:
        row = next((r for r in rows if alias in r["aliases"]), None)
        if row is None:
            return None
        tags = row["tags"]
        created = datetime.fromtimestamp(row["created_ms"] / 1000, UTC) if row.get("created_ms") else None
        figures = {}
        for key in ("accuracy", "macro_f1"):
            try:
                figures[key] = float(tags[key])
            except (KeyError, TypeError, ValueError):
                figures[key] = None
        return {
            "version": row["version"],
            "model": tags.get("model"),
            **figures,
            "registered_at": created.isoformat() if created else None,
            "age": _age(created, now),
            "model_path": tags.get("model_path"),
            "pipeline_run_id": tags.get("pipeline_run_id"),
            # the live shadow comparison it passed as canary (components/promote/rollout.py), when it had one
            "shadow": {k.removeprefix("shadow."): v for k, v in tags.items() if k.startswith("shadow.")} or None,
            "rollout": {k.removeprefix("rollout."): v for k, v in tags.items() if k.startswith("rollout.")} or None,
        }

    return {
        "uri": uri,
        "versions": sorted(r["version"] for r in rows),
        "aliases": {a: r["version"] for r in rows for a in r["aliases"]},
        "champion": describe("champion"),
        "challenger": describe("challenger"),
    }


def pipeline_section(now: datetime) -> dict[str, Any] | None:
    from pipelines.local import last_run

    record = last_run()
    if record is None:
        return None
    keys = (
        "run_id",
        "status",
        "started_at",
        "finished_at",
        "wall_time_s",
        "profile",
        "pipeline_root",
        "log",
        "error",
        "failed_steps",
        "decision",
        "drift_report",
    )
    return {**{k: record.get(k) for k in keys}, "age": _age(record.get("finished_at") or record.get("started_at"), now)}


def drift_section(now: datetime, trigger_state: dict[str, Any]) -> dict[str, Any] | None:
    """The newest drift report (or, without one, the trigger's record of the last check)."""
    root = home.reports_dir() / "drift"
    reports = sorted(root.glob("*/report.json"), key=lambda p: p.parent.name) if root.is_dir() else []
    for path in reversed(reports):
        try:
            summary = json.loads(path.read_text()).get("summary") or {}
        except (OSError, json.JSONDecodeError):
            continue
        return {
            "status": summary.get("status"),
            "checked_at": summary.get("checked_at"),
            "age": _age(summary.get("checked_at"), now),
            "drifted_features": summary.get("drifted_features") or [],
            "images": summary.get("images"),
            "report_json": str(path),
        }
    check = trigger_state.get("last_check")
    if check:
        return {
            "status": check.get("status"),
            "checked_at": check.get("at"),
            "age": _age(check.get("at"), now),
            "drifted_features": [],
            "images": None,
            "report_json": check.get("report_json"),
        }
    return None


def trigger_section(now: datetime, state: dict[str, Any], state_file: Path) -> dict[str, Any]:
    from monitoring.trigger import DEFAULT_COOLDOWN

    last = state.get("last_trigger") or {}
    next_allowed = None
    if last.get("at"):
        next_allowed = datetime.fromisoformat(last["at"]) + DEFAULT_COOLDOWN
    return {
        "state_file": str(state_file),
        "episode": state.get("episode"),
        "last_trigger": last or None,
        "cooldown_h": DEFAULT_COOLDOWN.total_seconds() / 3600,
        "in_cooldown": bool(next_allowed and now < next_allowed),
        "next_allowed_at": next_allowed.isoformat() if next_allowed else None,
        "runs": len(state.get("runs") or []),
    }


def request_section(now: datetime, window: timedelta = REQUEST_WINDOW) -> dict[str, Any]:
    """Requests logged in the window, by version; files last written before the window are not read."""
    from monitoring.request_log import log_files

    directory = home.request_log_dir()
    cutoff = now - window
    total, by_version = 0, {}
    for path in log_files(directory) if directory.is_dir() else []:
        if datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
            continue
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    stamp = datetime.fromisoformat(record["timestamp"])
                except (ValueError, KeyError, TypeError):
                    continue
                if (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)) >= cutoff:
                    total += 1
                    key = str(record.get("version"))
                    by_version[key] = by_version.get(key, 0) + 1
    return {
        "directory": str(directory),
        "window_h": window.total_seconds() / 3600,
        "requests": total,
        "by_version": by_version,
    }


def problems(serving: dict[str, Any], registry: dict[str, Any]) -> list[str]:
    """What is inconsistent: labels on missing versions, and registry vs model store disagreements."""
    found = []
    store, served = set(serving["store_versions"]), set(serving["versions"])
    for label, version in sorted(serving["labels"].items()):
        if version not in served:
            found.append(f"label {label} points at version {version}, which models.config does not serve")
        if version not in store:
            found.append(
                f"label {label} points at version {version}, which is not in the model store {home.display(serving['base_path'])}"
            )
    for version in sorted(served - store):
        found.append(f"models.config serves version {version}, which is not in the model store")
    registered = set(registry["versions"])
    for version in sorted(store - registered):
        found.append(f"model store holds version {version}, which the registry does not know")
    from components.promote.registry import ALIASES

    for label, alias in ALIASES.items():
        label_version, alias_version = serving["labels"].get(label), registry["aliases"].get(alias)
        if label_version != alias_version:
            found.append(
                f"models.config label {label} is version {label_version}, but the registry's {alias} is {alias_version}"
            )
    return found


def rollout_section(serving: dict[str, Any], registry: dict[str, Any]) -> dict[str, Any]:
    """The canary's live shadow comparison so far, and the evidence the stable version was promoted on."""
    from components.promote import rollout

    canary = serving["labels"].get("canary")
    current = None
    if canary is not None:
        state = rollout.status()
        summary = state["summary"]
        current = {
            "version": canary,
            "compared": summary["compared"],
            "agreement": summary["agreement"],
            "referral_rate": summary["referral_rate"],
            "latency": summary["latency"],
            "disagreements": summary["disagreements"],
            "dropped": summary["dropped"],
            "failed": summary["failed"],
            "policy_failures": state["failures"],
        }
    champion = registry.get("champion") or {}
    return {"canary": current, "stable_evidence": champion.get("shadow"), "stable_decision": champion.get("rollout")}


def collect(now: datetime | None = None) -> dict[str, Any]:
    """The whole status as one dict; `problems` lists what makes `leukoflow status` exit 1."""
    from monitoring import trigger

    now = now or _now()
    state_file = trigger.state_path()
    state = trigger.load_state(state_file)
    serving = serving_section()
    registry = registry_section(now)
    result = {
        "checked_at": now.isoformat(),
        "home": str(home.home()),
        "serving": serving,
        "registry": registry,
        "last_pipeline_run": pipeline_section(now),
        "last_drift_check": drift_section(now, state),
        "trigger": trigger_section(now, state, state_file),
        "request_log": request_section(now),
    }
    result["rollout"] = rollout_section(serving, registry)
    result["problems"] = problems(serving, registry)
    result["ok"] = not result["problems"]
    return result


def _model_line(role: str, entry: dict[str, Any] | None) -> str:
    if entry is None:
        return f"{role:<11} none"
    f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (
        f"{role:<11} version {entry['version']} ({entry['model']}): accuracy {f(entry['accuracy'])}, "
        f"macro-F1 {f(entry['macro_f1'])}, registered {entry['age']} ago"
    )


def human(result: dict[str, Any]) -> str:
    d = home.display
    s, r = result["serving"], result["registry"]
    labels = ", ".join(f"{k}={v}" for k, v in sorted(s["labels"].items())) or "none"
    lines = [
        f"served      {s['name']}: versions {s['versions'] or 'none'}, labels {labels} ({d(s['models_config'])})"
        if s["configured"]
        else f"served      {s['name']}: not configured yet ({d(s['models_config'])} has no entry)",
        f"store       versions {s['store_versions'] or 'none'} in {d(s['base_path'])}; registry versions {r['versions'] or 'none'}",
        _model_line("champion", r["champion"]),
        _model_line("challenger", r["challenger"]),
    ]
    run = result["last_pipeline_run"]
    if run:
        lines.append(
            f"last run    {run['status']} {run['age']} ago (profile {run['profile']}, {run.get('wall_time_s') or '?'} s)"
            + (f", artifacts {d(run['pipeline_root'])}" if run.get("pipeline_root") else "")
            + (f", log {d(run['log'])}" if run.get("log") else "")
            + (f"; a retraining for drift report {d(run['drift_report'])}" if run.get("drift_report") else "")
        )
    else:
        lines.append("last run    none recorded")
    drift = result["last_drift_check"]
    if drift:
        moved = f" ({', '.join(drift['drifted_features'])})" if drift["drifted_features"] else ""
        lines.append(
            f"drift check {drift['status']}{moved} {drift['age']} ago, report {d(drift['report_json']) if drift['report_json'] else 'n/a'}"
        )
    else:
        lines.append("drift check none yet")
    t = result["trigger"]
    last = t["last_trigger"]
    episode = t["episode"]
    lines.append(
        "trigger     "
        + (f"drift episode since {episode.get('started_at')}" if episode else "no drift episode")
        + (f"; last retraining started {last.get('at')} ({last.get('status')})" if last else "; no retraining yet")
        + (f"; cooldown until {t['next_allowed_at']}" if t["in_cooldown"] else "; not in cooldown")
    )
    ro = result.get("rollout") or {}
    if ro.get("canary"):
        c = ro["canary"]
        agreement = "n/a" if c["agreement"] is None else f"{c['agreement']:.2%}"
        lines.append(
            f"rollout     canary version {c['version']}: {c['compared']} images compared in shadow, agreement "
            f"{agreement}, {c['disagreements']} disagreements; "
            + ("policy holds" if not c["policy_failures"] else "policy not met: " + "; ".join(c["policy_failures"]))
        )
    if ro.get("stable_evidence"):
        e, dec = ro["stable_evidence"], ro.get("stable_decision") or {}
        lines.append(
            f"stable      promoted on {e.get('compared')} live images compared in shadow, agreement {e.get('agreement')}"
            + (f" ({dec.get('decision')}: {dec.get('reason')})" if dec else "")
        )
    q = result["request_log"]
    lines.append(f"requests    {q['requests']} in the last {q['window_h']:.0f} h ({d(q['directory'])})")
    lines += [f"PROBLEM: {p}" for p in result["problems"]] or [
        "consistent: labels, models.config, model store and registry agree"
    ]
    return "\n".join(lines)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """What is served (versions, labels, champion, challenger), the last run, drift check and trigger, recent traffic.

    Exits 1 when a served label points at a missing version or the registry and the model store disagree.
    """
    try:
        result = collect()
    except ValueError as exc:  # a corrupt models.config or trigger state
        fail(str(exc), as_json)
        return
    emit(result, as_json, human)
    if not result["ok"]:
        raise typer.Exit(1)
