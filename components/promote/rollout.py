"""The staged rollout after a promotion: shadow comparison records, their summary, the policy, promote and abort.

A promotion labels the new version `canary` beside `stable` (components/promote/pusher/executor.py). While it
is there, the request-logging proxy (monitoring/shadow.py) re-sends live calls to it off the request path and
appends one JSON line per image to `<request log>/shadow/*.jsonl` in the format written by `compared_record`:
both answers, both `refer` flags, agreement, both latencies, and the live call's request id. Lines of kind
`dropped` and `failed` count the shadow calls that were not compared (queue full, canary error).

`summarise` turns the lines of one canary version into the figures `leukoflow rollout status` shows;
`RolloutPolicy.failures` says which figure stops `leukoflow rollout promote`. The summary is stored with the
registry version (tags `shadow.*`, artifact `shadow_summary.json`) and appended to its model card.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components import home, settings

log = logging.getLogger(__name__)

SHADOW_SUBDIR = "shadow"
SUMMARY_ARTIFACT = "shadow_summary.json"
MAX_LISTED_DISAGREEMENTS = 200


class RolloutRefused(RuntimeError):
    """The canary does not meet the rollout policy (the message names the failing figures)."""


def shadow_dir(request_log_dir: str | Path | None = None) -> Path:
    """Where the proxy writes shadow records: beside the request log, never mixed into it (the drift reader)."""
    return Path(request_log_dir or home.request_log_dir()) / SHADOW_SUBDIR


def _now() -> str:
    return datetime.now(UTC).isoformat()


def compared_record(
    request_id: str,
    index: int,
    model: str,
    stable_version: int | None,
    canary_version: int,
    stable_class: str,
    canary_class: str,
    stable_refer: bool | None,
    canary_refer: bool | None,
    stable_latency_ms: float,
    canary_latency_ms: float,
) -> dict[str, Any]:
    """One image answered by both versions (the format every reader here expects)."""
    return {
        "kind": "compared",
        "timestamp": _now(),
        "request_id": request_id,
        "index": int(index),
        "model": model,
        "stable_version": stable_version,
        "canary_version": int(canary_version),
        "stable_class": stable_class,
        "canary_class": canary_class,
        "agree": stable_class == canary_class,
        "stable_refer": stable_refer,
        "canary_refer": canary_refer,
        "stable_latency_ms": round(float(stable_latency_ms), 3),
        "canary_latency_ms": round(float(canary_latency_ms), 3),
    }


def count_record(kind: str, canary_version: int | None, count: int, why: str = "") -> dict[str, Any]:
    """Shadow calls not compared: kind `dropped` (queue full, not sampled out) or `failed` (the canary erred)."""
    return {"kind": kind, "timestamp": _now(), "canary_version": canary_version, "count": int(count), "why": why}


def read_records(directory: str | Path | None = None, canary_version: int | None = None) -> list[dict[str, Any]]:
    """Every shadow line of the folder (one file per proxy), optionally only those of one canary version."""
    directory = Path(directory) if directory is not None else shadow_dir()
    out: list[dict[str, Any]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a proxy that is still writing
                if not isinstance(record, dict):
                    continue
                if canary_version is not None and record.get("canary_version") != int(canary_version):
                    continue
                out.append(record)
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(np.asarray(values, float), q)), 3)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison figures of a set of shadow records (one canary version)."""
    from components.domain import CLASS_NAMES

    compared = [r for r in records if r.get("kind") == "compared"]
    agree = sum(1 for r in compared if r.get("agree"))
    per_class = {}
    for name in CLASS_NAMES:
        rows = [r for r in compared if r.get("stable_class") == name]
        per_class[name] = {
            "compared": len(rows),
            "agreement": round(sum(1 for r in rows if r.get("agree")) / len(rows), 4) if rows else None,
        }

    def referral(side: str) -> float | None:
        known = [r[f"{side}_refer"] for r in compared if r.get(f"{side}_refer") is not None]
        return round(sum(1 for v in known if v) / len(known), 4) if known else None

    calls = [r for r in compared if r.get("index", 0) == 0]  # latency is per call, not per image
    latency = {
        side: {
            "p50_ms": _percentile([r[f"{side}_latency_ms"] for r in calls], 50),
            "p99_ms": _percentile([r[f"{side}_latency_ms"] for r in calls], 99),
        }
        for side in ("stable", "canary")
    }
    disagreements = [
        {
            "request_id": r.get("request_id"),
            "index": r.get("index", 0),
            "stable": r.get("stable_class"),
            "canary": r.get("canary_class"),
            "timestamp": r.get("timestamp"),
        }
        for r in compared
        if not r.get("agree")
    ]
    versions = sorted({r["canary_version"] for r in compared if r.get("canary_version") is not None})
    stable_versions = sorted({r["stable_version"] for r in compared if r.get("stable_version") is not None})
    return {
        "canary_versions": versions,
        "stable_versions": stable_versions,
        "compared": len(compared),
        "calls": len(calls),
        "agreement": round(agree / len(compared), 4) if compared else None,
        "per_class": per_class,
        "referral_rate": {"stable": referral("stable"), "canary": referral("canary")},
        "latency": latency,
        "dropped": sum(int(r.get("count", 0)) for r in records if r.get("kind") == "dropped"),
        "failed": sum(int(r.get("count", 0)) for r in records if r.get("kind") == "failed"),
        "disagreements": len(disagreements),
        "disagreement_list": disagreements[:MAX_LISTED_DISAGREEMENTS],
        "first": min((r["timestamp"] for r in compared), default=None),
        "last": max((r["timestamp"] for r in compared), default=None),
    }


@dataclass(frozen=True)
class RolloutPolicy:
    """When canary may become stable (defaults: components/settings.py)."""

    min_compared: int = settings.ROLLOUT_MIN_COMPARED
    min_agreement: float = settings.ROLLOUT_MIN_AGREEMENT
    max_referral_rise: float = settings.ROLLOUT_MAX_REFERRAL_RISE
    max_p99_ratio: float = settings.ROLLOUT_MAX_P99_RATIO

    def failures(self, summary: dict[str, Any]) -> list[str]:
        """Each figure that does not meet the policy, named with its value and its limit (empty: it holds)."""
        out = []
        n = summary["compared"]
        if n < self.min_compared:
            out.append(f"compared requests {n} < {self.min_compared}")
        if summary["agreement"] is None or summary["agreement"] < self.min_agreement:
            value = "none" if summary["agreement"] is None else f"{summary['agreement']:.2%}"
            out.append(f"agreement {value} < {self.min_agreement:.0%}")
        stable_ref, canary_ref = summary["referral_rate"]["stable"], summary["referral_rate"]["canary"]
        if stable_ref is not None and canary_ref is not None and canary_ref - stable_ref > self.max_referral_rise:
            out.append(
                f"referral rate {canary_ref:.2%} is {100 * (canary_ref - stable_ref):.1f} points above stable's "
                f"{stable_ref:.2%} (at most {100 * self.max_referral_rise:.0f})"
            )
        s99, c99 = summary["latency"]["stable"]["p99_ms"], summary["latency"]["canary"]["p99_ms"]
        if s99 and c99 is not None and c99 > self.max_p99_ratio * s99:
            out.append(f"p99 {c99:.1f} ms is {c99 / s99:.2f}x stable's {s99:.1f} ms (at most {self.max_p99_ratio}x)")
        return out


# ---------------------------------------------------------------- the operations


def _serving_labels(config_path: str | Path | None) -> dict[str, int]:
    from components.promote.pusher import model_store

    state = model_store.read_state(config_path)
    return dict(state.labels) if state else {}


def status(
    directory: str | Path | None = None,
    config_path: str | Path | None = None,
    policy: RolloutPolicy | None = None,
) -> dict[str, Any]:
    """The current canary (models.config), its shadow summary and what the policy says about it."""
    labels = _serving_labels(config_path)
    canary, stable = labels.get("canary"), labels.get("stable")
    policy = policy or RolloutPolicy()
    if canary is None:
        return {"canary": None, "stable": stable, "summary": None, "failures": [], "policy": asdict(policy)}
    summary = summarise(read_records(directory, canary))
    return {
        "canary": canary,
        "stable": stable,
        "summary": summary,
        "failures": policy.failures(summary),
        "policy": asdict(policy),
        "shadow_dir": str(Path(directory) if directory is not None else shadow_dir()),
    }


def summary_tags(summary: dict[str, Any], prefix: str = "shadow.") -> dict[str, str]:
    """The summary's headline figures as registry tags (the full summary is the artifact)."""
    tags = {
        "compared": summary["compared"],
        "agreement": summary["agreement"],
        "referral_rate_stable": summary["referral_rate"]["stable"],
        "referral_rate_canary": summary["referral_rate"]["canary"],
        "p50_ms_stable": summary["latency"]["stable"]["p50_ms"],
        "p99_ms_stable": summary["latency"]["stable"]["p99_ms"],
        "p50_ms_canary": summary["latency"]["canary"]["p50_ms"],
        "p99_ms_canary": summary["latency"]["canary"]["p99_ms"],
        "disagreements": summary["disagreements"],
        "dropped": summary["dropped"],
        "failed": summary["failed"],
    }
    return {prefix + k: "none" if v is None else str(v) for k, v in tags.items()}


def record_evidence(
    version: int, summary: dict[str, Any], decision: dict[str, Any], registry_uri: str | None = None
) -> None:
    """Store the summary with the registry version: tags, the JSON artifact, and a section in its model card."""
    from components.promote import registry
    from components.promote.pusher import model_card

    record = registry.get_version(version, uri=registry_uri)
    if record is None:
        raise ValueError(f"version {version} is not in the registry")
    tags = {**summary_tags(summary), **{f"rollout.{k}": str(v) for k, v in decision.items()}}
    registry.set_version_tags(version, tags, uri=registry_uri)
    c = registry.client(registry_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SUMMARY_ARTIFACT
        path.write_text(json.dumps({"decision": decision, "summary": summary}, indent=2, default=str))
        c.log_artifact(record["run_id"], str(path))
        card = Path(tmp) / "model_card.md"
        try:
            c.download_artifacts(record["run_id"], "model_card.md", tmp)
            text = card.read_text()
        except Exception:  # noqa: BLE001 - a version promoted without a card still gets the section
            text = f"# Model card: version {version}\n"
        card.write_text(model_card.with_shadow_section(text, summary, decision))
        c.log_artifact(record["run_id"], str(card))


def promote(
    force: bool = False,
    reason: str = "",
    directory: str | Path | None = None,
    config_path: str | Path | None = None,
    registry_uri: str | None = None,
    policy: RolloutPolicy | None = None,
    auto: bool = False,
    **move: Any,
) -> dict[str, Any]:
    """Canary -> stable when the policy holds (or `force` with a `reason`); RolloutRefused names what failed.

    `move` goes to the pusher's label move (step_wait_s, serving_rest, server).
    """
    from components.promote.pusher.executor import promote_version

    if force and not reason.strip():
        raise ValueError("--force needs --reason TEXT: the reason is recorded with the version")
    current = status(directory, config_path, policy)
    canary = current["canary"]
    if canary is None:
        raise ValueError("no canary is served: nothing to promote (models.config has no canary label)")
    failures = current["failures"]
    if failures and not force:
        raise RolloutRefused(f"canary version {canary} stays canary: " + "; ".join(failures))
    decision = {
        "decision": "forced" if failures else ("automatic" if auto else "policy"),
        "from_stable": current["stable"],
        "failures": "; ".join(failures) or "none",
        "reason": reason.strip() or ("the policy holds" + (" (automatic after a triggered run)" if auto else "")),
        "at": _now(),
    }
    record_evidence(canary, current["summary"], decision, registry_uri)
    moved = promote_version(canary, "stable", registry_uri=registry_uri, config_path=config_path, **move)
    return {"version": canary, "previous_stable": current["stable"], **decision, "serving": moved["serving"]}


def abort(
    directory: str | Path | None = None,
    config_path: str | Path | None = None,
    registry_uri: str | None = None,
    reason: str = "",
    server: str | None = None,
) -> dict[str, Any]:
    """Remove the canary label and stop serving its version (stable untouched); the evidence so far is recorded."""
    from components.promote import registry
    from components.promote.pusher import model_store

    current = status(directory, config_path)
    canary = current["canary"]
    if canary is None:
        raise ValueError("no canary is served: nothing to abort")
    decision = {"decision": "aborted", "reason": reason.strip() or "aborted by an operator", "at": _now()}
    with model_store.store_lock():
        state = model_store.remove_label("canary", config_path)
        if server:
            from components.promote import server_reload

            server_reload.send_config(server, config_path or home.models_config_path())
        if registry.get_aliases(uri=registry_uri).get("challenger") == canary:
            registry.client(registry_uri).delete_registered_model_alias(settings.REGISTERED_MODEL_NAME, "challenger")
    try:
        record_evidence(canary, current["summary"], decision, registry_uri)
    except ValueError as exc:  # a canary put in models.config by hand has no registry version
        log.warning("abort: %s", exc)
    return {"version": canary, **decision, "serving": state.to_dict()}


def maybe_auto_promote(registry_uri: str | None = None, config_path: str | Path | None = None) -> dict[str, Any]:
    """After a drift check: move a triggered run's canary to stable when the setting is on and the policy holds."""
    from components.promote import registry

    if not settings.ROLLOUT_AUTO_STABLE and os.environ.get("LEUKOFLOW_ROLLOUT_AUTO_STABLE", "") not in ("1", "true"):
        return {"promoted": False, "why": "automatic promotion is off (LEUKOFLOW_ROLLOUT_AUTO_STABLE)"}
    canary = _serving_labels(config_path).get("canary")
    if canary is None:
        return {"promoted": False, "why": "no canary"}
    record = registry.get_version(canary, uri=registry_uri) or {"tags": {}}
    if not record["tags"].get("drift_report"):
        return {"promoted": False, "why": f"canary version {canary} was not promoted by a triggered retraining run"}
    try:
        result = promote(config_path=config_path, registry_uri=registry_uri, auto=True)
    except RolloutRefused as exc:
        return {"promoted": False, "why": str(exc)}
    return {"promoted": True, **result}
