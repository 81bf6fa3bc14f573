"""run_promote: the gate (components/promote/gate/), then, when it promotes, the pusher (components/promote/pusher/).

The pipeline runs the two as separate steps (gate_op, then promote_op under dsl.If); `leukoflow promote`
runs both here. The manual operations (`leukoflow registry ...`) are the pusher's, named here too so the
CLI has one module to call.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from components import home
from components.promote.gate.executor import run_gate
from components.promote.gate.policy import Policy
from components.promote.pusher import model_store
from components.promote.pusher.executor import (  # noqa: F401 - the CLI's entry points
    PromotionError,
    apply_decision,
    list_models,
    promote_version,
    rollback,
    wait_between_steps,
)


def run_promote(
    candidates: list[str | Path],
    out_dir: str | Path | None = None,
    split_dir: str | Path | None = None,
    label: str = "canary",
    pipeline_run_id: str = "",
    policy: Policy = Policy(),
    dry_run: bool = False,
    step_wait_s: float = 0.0,
    registry_uri: str | None = None,
    reference: str | Path | None = None,
    drift_report: str = "",
    serving_rest: str | None = None,
) -> dict[str, Any]:
    """Gate the candidates and promote the chosen one; returns the result dict the CLI prints."""
    out_dir = Path(out_dir or home.reports_dir() / f"promote-{uuid.uuid4().hex[:8]}")
    decision = run_gate(candidates, out_dir, split_dir, policy, registry_uri=registry_uri)
    if decision.promoted and not dry_run:
        decision = apply_decision(
            decision,
            out_dir,
            label,
            pipeline_run_id,
            registry_uri=registry_uri,
            between=wait_between_steps(step_wait_s, serving_rest),
            reference=reference,
            drift_report=drift_report,
        )
    return {
        "promoted": decision.promoted and not dry_run,
        "chosen": decision.chosen,
        "version": decision.version,
        "label": decision.label,
        "summary": decision.summary
        if not dry_run or not decision.promoted
        else f"would promote {decision.chosen} (dry run): {decision.reason}",
        "decision_md": str(out_dir / "decision.md"),
        "decision_json": str(out_dir / "decision.json"),
        "model_card": str(out_dir / "model_card.md") if decision.version is not None else None,
        "model_path": str(model_store.version_path(decision.version)) if decision.version is not None else None,
        "rows": [asdict(r) for r in decision.rows],
    }
