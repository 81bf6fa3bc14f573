"""The drift check's reports: Evidently Reports with the decision's method and thresholds (HTML, JSON, the
local workspace), the summary page, and the verdict taken from the report (`run_drift_check`)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import atomic_files
from components.host_features import FEATURE_NAMES
from monitoring.drift.decision import (
    CASE_MIX_ALPHA,
    CLASS_COLUMN,
    METHOD,
    MIN_DRIFTED_FEATURES,
    MIN_IMAGES,
    OOD_ALPHA,
    OOD_MIN_RISE,
    adjusted_reference,
    decide,
    drifted,
    verdict_reasons,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PROJECT_NAME = "leukoflow drift"  # the Evidently workspace project


def _data_definition(frame: pd.DataFrame):  # noqa: F821
    from evidently import DataDefinition

    categorical = [CLASS_COLUMN] if CLASS_COLUMN in frame.columns else []
    return DataDefinition(numerical_columns=list(FEATURE_NAMES), categorical_columns=categorical)


def _columns(frame: pd.DataFrame) -> list[str]:  # noqa: F821
    return list(FEATURE_NAMES) + ([CLASS_COLUMN] if CLASS_COLUMN in frame.columns else [])


def _feature_report(reference, current, threshold: float, with_class: bool):
    """DataDriftPreset (per-feature ValueDrift + the drifted-share test) with our method and thresholds."""
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    with_class = with_class and CLASS_COLUMN in current.columns and CLASS_COLUMN in reference.columns
    cur = current[_columns(current) if with_class else list(FEATURE_NAMES)]
    ref = reference[_columns(reference) if with_class else list(FEATURE_NAMES)]
    metrics: list = [
        DataDriftPreset(
            columns=list(FEATURE_NAMES),
            method=METHOD,
            per_column_threshold={name: threshold for name in FEATURE_NAMES},
            # "share of drifted features < drift_share" is the test; it fails at MIN_DRIFTED_FEATURES.
            drift_share=(MIN_DRIFTED_FEATURES - 0.5) / len(FEATURE_NAMES),
        )
    ]
    if with_class:
        metrics.append(ValueDrift(column=CLASS_COLUMN, method="chisquare", threshold=CASE_MIX_ALPHA))
    report = Report(metrics, include_tests=True)
    return report.run(
        Dataset.from_pandas(cur.reset_index(drop=True), data_definition=_data_definition(cur)),
        Dataset.from_pandas(ref.reset_index(drop=True), data_definition=_data_definition(ref)),
    )


def report_scores(snapshot) -> dict[str, float]:
    """ValueDrift scores per column from an Evidently snapshot."""
    scores = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            scores[config["column"]] = float(metric["value"])
    return scores


def _add_to_workspace(workspace_dir: Path, snapshots: dict[str, Any]) -> dict[str, str]:
    """Add the runs to the local Evidently workspace (`evidently ui --workspace DIR` shows the history)."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(workspace_dir))
    found = workspace.search_project(PROJECT_NAME)
    project = (
        found[0]
        if found
        else workspace.create_project(
            PROJECT_NAME,
            description="leukoflow: stain/brightness drift of served images against the training reference",
        )
    )
    ids = {}
    for name, snapshot in snapshots.items():
        ref = workspace.add_run(project.id, snapshot, name=name)
        ids[name] = str(ref.id)
    return {"project_id": str(project.id), **ids}


def _write_json(path: Path, payload: dict) -> None:
    from components.cli_output import to_json

    atomic_files.write_text(path, to_json(payload))


def summary_html(summary: dict[str, Any]) -> str:
    """The report's front page: the verdict, what moved, case mix, per class, links to the Evidently reports."""
    from html import escape

    def table(header: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    status = summary.get("status", "")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>leukoflow drift check</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:.2em .6em}table{border-collapse:collapse;margin:.5em 0 1.5em}.drift{color:#b00}</style></head><body>",
        f"<h1>Drift check: <span class='{escape(status)}'>{escape(status)}</span></h1>",
        f"<p>{summary.get('images')} images from {escape(str(summary.get('source', '')))}, checked "
        f"{escape(str(summary.get('checked_at', '')))}, against the reference {escape(str(summary.get('reference', '')))}.</p>",
    ]
    if status == "insufficient_data":
        parts.append(f"<p>At least {MIN_IMAGES} images are needed for a verdict.</p></body></html>")
        return "".join(parts)
    moved = summary.get("moved") or ["nothing"]
    parts.append("<h2>What moved</h2><ul>" + "".join(f"<li>{escape(m)}</li>" for m in moved) + "</ul>")
    if summary.get("reasons"):
        parts.append(f"<p>Drift because of: {escape(', '.join(summary['reasons']))}</p>")
    ood = summary.get("ood") or {}
    if ood.get("rate") is not None:
        reference_rate = ood.get("reference_rate")
        parts.append(
            "<h2>Out-of-distribution rate</h2>"
            f"<p>{ood['out_of_distribution']} of {ood['images']} images ({ood['rate']:.1%}) were not like the "
            "training images; the model's threshold refers "
            + (
                f"{reference_rate:.1%} of its validation images"
                if reference_rate is not None
                else "an unknown share (no ood_val_referral_rate in the model's metadata: no verdict)"
            )
            + (
                f". One-sided binomial p = {ood['p_value']:.3g}; drift when p &lt; {OOD_ALPHA} and the rate rose by "
                f"at least {OOD_MIN_RISE:.0%}: <b>{'drift' if ood['drift'] else 'no drift'}</b>"
                if ood.get("p_value") is not None
                else ""
            )
            + ".</p>"
        )
    parts.append(
        f"<p>Rule: a feature drifts when its normed Wasserstein distance to the case-mix-adjusted reference is "
        f"&ge; {summary.get('threshold', 0):.3f}; the window drifts when at least {MIN_DRIFTED_FEATURES} do.</p>"
    )
    scores, pooled = summary.get("scores") or {}, summary.get("covariate_scores") or {}
    threshold = summary.get("threshold", 0)
    parts.append(
        "<h2>Features</h2>"
        + table(
            ["feature", "adjusted for case mix", "pooled", "drifted"],
            [
                [
                    n,
                    f"{scores.get(n, float('nan')):.3f}",
                    f"{pooled.get(n, float('nan')):.3f}",
                    "yes" if scores.get(n, 0) >= threshold else "",
                ]
                for n in FEATURE_NAMES
            ],
        )
    )
    mix = summary.get("case_mix") or {}
    if mix.get("available"):
        parts.append(
            f"<h2>Predicted-class mix (changed: {mix.get('changed')})</h2>"
            + table(
                ["class", "reference share", "window share"],
                [[c, mix["reference_share"].get(c), mix["current_share"].get(c, 0)] for c in mix["reference_share"]],
            )
            + f"<p>chi-square p = {mix.get('p_value', float('nan')):.3g}, PSI = {mix.get('psi', float('nan')):.3f}, "
            f"total variation = {mix.get('total_variation', float('nan')):.3f}</p>"
        )
    within = summary.get("within_class") or {}
    if within:
        parts.append(
            "<h2>Within each predicted class</h2>"
            + table(
                ["class", "images", "tested", "drift", "drifted features"],
                [
                    [c, v.get("images"), v.get("tested"), v.get("drift", ""), ", ".join(v.get("drifted_features", []))]
                    for c, v in within.items()
                ],
            )
        )
    parts.append(
        "<h2>Evidently reports</h2><ul><li><a href='stain.html'>stain/brightness drift (case-mix adjusted, "
        "the verdict)</a></li><li><a href='covariate.html'>pooled features and class mix</a></li></ul>"
    )
    parts.append("</body></html>")
    return "".join(parts)


def _write_html(path: Path, snapshot) -> None:
    atomic_files.replace_file(path, lambda tmp: snapshot.save_html(str(tmp)))


def run_drift_check(
    reference: pd.DataFrame,  # noqa: F821
    current: pd.DataFrame,  # noqa: F821
    out_dir: str | Path,
    workspace_dir: str | Path | None = None,
    source: str = "",
    reference_path: str = "",
    reference_ood_rate: float | None = None,
) -> dict[str, Any]:
    """Decide, build the Evidently reports, write HTML + JSON, add the runs to the workspace; returns the summary.

    `reference_ood_rate`: the served model's `ood_val_referral_rate` (see `out_of_distribution`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    html_path, json_path = out / "report.html", out / "report.json"
    summary = decide(reference, current, reference_ood_rate=reference_ood_rate)
    summary.update(
        checked_at=datetime.now(UTC).isoformat(),
        source=source,
        reference=str(reference_path),
        method=METHOD,
        report_html=str(html_path),
        report_json=str(json_path),
    )
    evidently_payload: dict[str, Any] = {}
    if summary["status"] != "insufficient_data":
        threshold = summary["threshold"]
        adjusted = adjusted_reference(reference, current)
        stain = _feature_report(adjusted, current, threshold, with_class=False)
        covariate = _feature_report(reference, current, threshold, with_class=True)
        # The verdict comes from the report: it must agree with `decide` (same function, same data).
        report_drifted = drifted({k: v for k, v in report_scores(stain).items() if k in FEATURE_NAMES}, threshold)
        if set(report_drifted) != set(summary["candidate_features"]):
            log.warning(
                "Evidently report and decision disagree: %s vs %s", report_drifted, summary["candidate_features"]
            )
        is_drift = len(report_drifted) >= MIN_DRIFTED_FEATURES
        summary["reasons"] = verdict_reasons(is_drift, summary["ood"])
        summary["status"] = "drift" if summary["reasons"] else "no_drift"
        summary["drifted_features"] = report_drifted if is_drift else []
        class_score = report_scores(covariate).get(CLASS_COLUMN)
        if class_score is not None:
            summary["case_mix"]["evidently_chisquare_p"] = class_score
        stain_html, covariate_html = out / "stain.html", out / "covariate.html"
        _write_html(stain_html, stain)
        _write_html(covariate_html, covariate)
        summary["stain_html"], summary["covariate_html"] = str(stain_html), str(covariate_html)
        evidently_payload = {"stain": json.loads(stain.json()), "covariate": json.loads(covariate.json())}
        if workspace_dir is not None:
            try:
                summary["workspace"] = {
                    "path": str(workspace_dir),
                    **_add_to_workspace(
                        Path(workspace_dir), {f"stain {stamp}": stain, f"covariate {stamp}": covariate}
                    ),
                }
            except Exception as exc:  # the verdict matters more than the dashboard
                log.warning("could not add the run to the Evidently workspace %s: %s", workspace_dir, exc)
    atomic_files.write_text(html_path, summary_html(summary))
    _write_json(json_path, {"summary": summary, "evidently": evidently_payload})
    return summary


def public_result(summary: dict[str, Any]) -> dict[str, Any]:
    """The one-line `--json` object: the documented keys first, then what moved and where."""
    keys = (
        "status",
        "reasons",
        "images",
        "drifted_features",
        "ood_rate",
        "reference_ood_rate",
        "case_mix_changed",
        "report_html",
        "report_json",
    )
    result = {key: summary.get(key) for key in keys}
    result["moved"] = summary.get("moved", [])
    result["covariate_drifted_features"] = summary.get("covariate_drifted_features", [])
    result["within_class_drift"] = sorted(c for c, v in (summary.get("within_class") or {}).items() if v.get("drift"))
    result["reference"] = summary.get("reference")
    return result
