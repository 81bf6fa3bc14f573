"""Alerts: one log line per verdict worth attention, and an optional webhook POST with the report's summary."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("leukoflow.alerts")

WEBHOOK_ENV = "LEUKOFLOW_ALERT_WEBHOOK"
TIMEOUT_S = 10.0


def webhook_url(explicit: str | None = None) -> str | None:
    """--webhook, else $LEUKOFLOW_ALERT_WEBHOOK, else none."""
    url = explicit or os.environ.get(WEBHOOK_ENV) or None
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
    return url


def summary_payload(result: dict[str, Any]) -> dict[str, Any]:
    """What the webhook receives: the verdict, what moved, and where the reports are (no images, no identifiers)."""
    keys = (
        "status",
        "images",
        "drifted_features",
        "case_mix_changed",
        "moved",
        "covariate_drifted_features",
        "within_class_drift",
        "report_html",
        "report_json",
        "reference",
        "review",
    )
    payload = {key: result[key] for key in keys if key in result}
    payload["source"] = "leukoflow-drift-monitor"
    payload["text"] = alert_text(result)  # Slack/Teams-style webhooks show `text`
    return payload


def alert_text(result: dict[str, Any]) -> str:
    features = ", ".join(result.get("drifted_features") or []) or "none"
    moved = "; ".join(result.get("moved") or []) or "nothing"
    return (
        f"leukoflow drift check: {result.get('status')} on {result.get('images')} images; "
        f"drifted features: {features}; case mix changed: {bool(result.get('case_mix_changed'))}; "
        f"moved: {moved}; report: {result.get('report_html')}"
        + (f"; {result['review']}" if result.get("review") else "")
    )


def post_webhook(url: str, payload: dict[str, Any], timeout: float = TIMEOUT_S) -> int:
    """POST JSON to the webhook; returns the HTTP status. Raises RuntimeError on failure."""
    data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (URL checked above)
            return int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"webhook POST to {url} failed: {exc}") from exc


def alert(result: dict[str, Any], webhook: str | None = None) -> dict[str, Any]:
    """Log the verdict (warning on drift or a case-mix change) and POST it when a webhook is configured.

    A webhook failure is logged, not raised: the drift verdict and the trigger must not depend on it.
    """
    text = alert_text(result)
    worth_alerting = result.get("status") == "drift" or bool(result.get("case_mix_changed"))
    (log.warning if worth_alerting else log.info)(text)
    outcome: dict[str, Any] = {"logged": True, "webhook": None}
    url = webhook_url(webhook)
    if url and worth_alerting:
        try:
            outcome["webhook"] = {"url": url, "status": post_webhook(url, summary_payload(result))}
        except RuntimeError as exc:
            log.error("%s", exc)
            outcome["webhook"] = {"url": url, "error": str(exc)}
    return outcome
