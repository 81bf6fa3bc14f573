"""The drift check: a window of image features against the served model's reference profile.

Three questions, answered apart so one is not mistaken for another:

1. **Stain/brightness drift** (the verdict). The window is compared with the
   reference *re-weighted to the window's class mix* (a stratified subsample of
   the reference with the window's class shares), so more Pro cases this week
   does not look like a brighter lamp. Per feature: Wasserstein distance normed
   by the reference's std (Evidently's "wasserstein"), an effect size that does
   not grow with the window. A feature drifts when its distance reaches
   `feature_threshold(n)` = max(THRESHOLD_FLOOR, THRESHOLD_SCALE / sqrt(n)): the
   floor is the smallest change worth retraining for, the second term keeps the
   sampling noise of small windows below it. The window drifts when at least
   MIN_DRIFTED_FEATURES features drift (one noisy feature is not enough; a real
   lamp or stain change moves several correlated features at once).
2. **Within-class drift**: the same test per predicted class with enough images.
3. **Case mix**: the predicted-class counts against the reference's class
   shares (chi-square goodness of fit, plus a total-variation floor so a huge
   window does not flag a trivial change). A case-mix change alone is reported,
   not counted as drift.
4. **Covariate drift** (context): the pooled window against the raw reference.
5. **Out-of-distribution rate** (a second verdict). A calibrated model logs per image whether it is
   in distribution (`in_distribution`, issue 12). The window's share of images that are not is
   compared with the rate the model's threshold refers on its own validation split
   (`ood_val_referral_rate` in its metadata): one-sided binomial test at OOD_ALPHA, and only a rise of
   at least OOD_MIN_RISE counts. Images another lab's microscope makes are often not "brighter" in the
   colour features at all, only unlike the training images; this catches them.

Constants were calibrated on the real data (checks/drift.py, docs/monitoring.md).
The decision (`decide`) uses Evidently's own stat-test function; `run_drift_check`
also builds Evidently Reports (DataDriftPreset + ValueDrift tests) with the same
methods and thresholds, saves HTML/JSON, adds them to a workspace, and takes the
verdict from the report.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components import atomic_files
from components.host_features import FEATURE_NAMES

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

METHOD = "wasserstein"  # Evidently's normed Wasserstein distance
THRESHOLD_FLOOR = 0.25  # smallest per-feature change (in reference stds) that counts; above the
# ~0.2 that two random halves of one class differ by on the real data
THRESHOLD_SCALE = 2.6  # sampling-noise term: threshold >= THRESHOLD_SCALE / sqrt(n)
MIN_DRIFTED_FEATURES = 2  # features that must drift together for a verdict of drift
MIN_IMAGES = 30  # below this the window gets "insufficient_data"
MIN_CLASS_IMAGES = 30  # within-class comparison only for classes with this many images
CASE_MIX_ALPHA = 0.01  # chi-square p-value below which the class mix moved...
CASE_MIX_MIN_TVD = 0.10  # ...and only when the shares moved at least this much in total
CLASS_COLUMN = "class"  # the label column in both frames inside this module
SAMPLE_SEED = 0  # the re-weighted reference is a fixed subsample: same window, same verdict
PROJECT_NAME = "leukoflow drift"  # the Evidently workspace project
OOD_ALPHA = 0.01  # one-sided binomial p-value below which the window's OOD rate rose...
OOD_MIN_RISE = 0.05  # ...and only when it rose by at least this much (absolute) over the reference
REASON_STAIN = "stain_features"  # the verdict's reasons (`reasons` in the summary)
REASON_OOD = "ood_rate"


# ---------------------------------------------------------------- the decision


def feature_threshold(n: int) -> float:
    """Per-feature normed-Wasserstein threshold for a window of n images."""
    return max(THRESHOLD_FLOOR, THRESHOLD_SCALE / math.sqrt(max(n, 1)))


def _labels(frame: pd.DataFrame) -> pd.Series | None:
    if CLASS_COLUMN not in frame.columns:
        return None
    labels = frame[CLASS_COLUMN].dropna().astype(str)
    return labels if len(labels) else None


def adjusted_reference(reference: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:  # noqa: F821
    """The reference subsampled (without replacement) to the current window's class shares.

    Without class labels on either side, the reference itself.
    """
    import pandas as pd

    ref_labels, cur_labels = _labels(reference), _labels(current)
    if ref_labels is None or cur_labels is None:
        return reference
    shares = cur_labels.value_counts(normalize=True)
    available = reference[CLASS_COLUMN].astype(str).value_counts()
    shares = shares[shares.index.isin(available.index)]
    if shares.empty:
        return reference
    shares = shares / shares.sum()
    # The largest subsample in which every class keeps its window share.
    total = min(available[c] / s for c, s in shares.items())
    parts = []
    for cls, share in shares.items():
        count = max(1, int(math.floor(total * share)))
        members = reference[reference[CLASS_COLUMN].astype(str) == cls]
        parts.append(members.sample(n=min(count, len(members)), random_state=SAMPLE_SEED))
    return pd.concat(parts).reset_index(drop=True)


def feature_scores(reference: pd.DataFrame, current: pd.DataFrame, threshold: float) -> dict[str, float]:  # noqa: F821
    """Normed Wasserstein distance per feature, computed by Evidently's stat test (the report's function)."""
    from evidently.legacy.calculations.stattests import wasserstein_stat_test
    from evidently.legacy.core import ColumnType

    scores = {}
    for name in FEATURE_NAMES:
        ref = reference[name].astype(float).dropna()
        cur = current[name].astype(float).dropna()
        if len(ref) == 0 or len(cur) == 0:
            continue
        result = wasserstein_stat_test(ref, cur, ColumnType.Numerical, threshold)
        scores[name] = float(result.drift_score)
    return scores


def drifted(scores: dict[str, float], threshold: float) -> list[str]:
    """Features at or over the threshold, largest first (Evidently counts `>=` as drift)."""
    return [name for name, score in sorted(scores.items(), key=lambda kv: -kv[1]) if score >= threshold]


def case_mix(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, Any]:  # noqa: F821
    """Chi-square of current class counts vs reference shares, PSI and total variation distance."""
    from scipy.stats import chisquare

    from components.domain import CLASS_NAMES

    ref_labels, cur_labels = _labels(reference), _labels(current)
    if ref_labels is None or cur_labels is None:
        return {"available": False, "changed": False}
    classes = [c for c in CLASS_NAMES if c in set(ref_labels)] + sorted(set(ref_labels) - set(CLASS_NAMES))
    ref_share = ref_labels.value_counts(normalize=True).reindex(classes, fill_value=0.0)
    counts = cur_labels.value_counts().reindex(classes, fill_value=0)
    unknown = int(len(cur_labels) - counts.sum())  # labels the reference never saw
    n = int(counts.sum())
    if n == 0:
        return {"available": False, "changed": False}
    cur_share = counts / n
    p_value = float(chisquare(counts.to_numpy(float), ref_share.to_numpy(float) * n)[1])
    eps = 1e-4
    r, c = np.clip(ref_share.to_numpy(float), eps, None), np.clip(cur_share.to_numpy(float), eps, None)
    psi = float(np.sum((c - r) * np.log(c / r)))
    tvd = float(0.5 * np.abs(cur_share.to_numpy(float) - ref_share.to_numpy(float)).sum())
    changed = bool((p_value < CASE_MIX_ALPHA and tvd >= CASE_MIX_MIN_TVD) or unknown > 0)
    return {
        "available": True,
        "changed": changed,
        "p_value": p_value,
        "psi": psi,
        "total_variation": tvd,
        "reference_share": {k: round(float(v), 4) for k, v in ref_share.items()},
        "current_share": {k: round(float(v), 4) for k, v in cur_share.items()},
        "unknown_labels": unknown,
    }


def out_of_distribution(current: pd.DataFrame, reference_rate: float | None) -> dict[str, Any]:  # noqa: F821
    """The window's out-of-distribution rate against the model's reference rate (one-sided binomial test).

    Counts the records that say whether the image is in distribution (`in_distribution`; a record with
    only `refer` counts as out of distribution when referred). `rate` is None when no record says;
    `drift` needs a reference rate, p < OOD_ALPHA and a rise of at least OOD_MIN_RISE.
    """
    from scipy.stats import binomtest

    flags = None
    for column, out_when in (("in_distribution", False), ("refer", True)):
        if column in current.columns and current[column].notna().any():
            flags = current[column].dropna().map(lambda v, w=out_when: bool(v) == w)
            break
    result: dict[str, Any] = {
        "rate": None,
        "reference_rate": reference_rate,
        "images": 0,
        "out_of_distribution": 0,
        "p_value": None,
        "alpha": OOD_ALPHA,
        "min_rise": OOD_MIN_RISE,
        "drift": False,
    }
    if flags is None or flags.empty:
        return result
    n, k = int(len(flags)), int(flags.sum())
    result.update(rate=k / n, images=n, out_of_distribution=k, source=column)
    if reference_rate is None:
        return result
    if not 0.0 <= reference_rate <= 1.0:
        raise ValueError(f"reference out-of-distribution rate must be within [0, 1], got {reference_rate}")
    p_value = float(binomtest(k, n, reference_rate, alternative="greater").pvalue)
    result.update(p_value=p_value, drift=bool(p_value < OOD_ALPHA and k / n - reference_rate >= OOD_MIN_RISE))
    return result


def decide(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    detail: bool = True,  # noqa: F821
    reference_ood_rate: float | None = None,
) -> dict[str, Any]:
    """The verdict for one window (no report): status, drifted features, within-class drift, case mix, OOD rate.

    `detail=False` skips the pooled and per-class comparisons, which inform the report but not the verdict.
    `reference_ood_rate` is the served model's `ood_val_referral_rate` (None: no OOD verdict).
    """
    n = len(current)
    ood = out_of_distribution(current, reference_ood_rate)
    result: dict[str, Any] = {
        "images": n,
        "threshold": feature_threshold(n),
        "min_drifted_features": MIN_DRIFTED_FEATURES,
        "ood_rate": ood["rate"],
        "reference_ood_rate": reference_ood_rate,
        "ood": ood,
    }
    if n < MIN_IMAGES:
        result.update(status="insufficient_data", drifted_features=[], case_mix_changed=False, moved=[], reasons=[])
        return result
    threshold = feature_threshold(n)
    adjusted = adjusted_reference(reference, current)
    scores = feature_scores(adjusted, current, threshold)
    stain = drifted(scores, threshold)
    covariate_scores = feature_scores(reference, current, threshold) if detail else {}
    covariate = drifted(covariate_scores, threshold)
    mix = case_mix(reference, current)

    within: dict[str, dict] = {}
    labels = _labels(current)
    if detail and labels is not None and _labels(reference) is not None:
        for cls in sorted(set(labels)):
            cur_c = current[current[CLASS_COLUMN].astype(str) == cls]
            ref_c = reference[reference[CLASS_COLUMN].astype(str) == cls]
            if len(cur_c) < MIN_CLASS_IMAGES or len(ref_c) < MIN_CLASS_IMAGES:
                within[cls] = {"images": len(cur_c), "tested": False}
                continue
            t_c = feature_threshold(len(cur_c))
            feats = drifted(feature_scores(ref_c, cur_c, t_c), t_c)
            within[cls] = {
                "images": len(cur_c),
                "tested": True,
                "threshold": t_c,
                "drifted_features": feats,
                "drift": len(feats) >= MIN_DRIFTED_FEATURES,
            }

    is_drift = len(stain) >= MIN_DRIFTED_FEATURES
    moved = []
    if is_drift:
        moved.append("stain/brightness features (case-mix adjusted)")
    if ood["drift"]:
        moved.append(_ood_moved(ood))
    if any(v.get("drift") for v in within.values()):
        moved.append("features within class(es): " + ", ".join(c for c, v in within.items() if v.get("drift")))
    if mix["changed"]:
        moved.append("predicted-class mix")
    if len(covariate) >= MIN_DRIFTED_FEATURES and not is_drift:
        moved.append("pooled features only (explained by the class mix)" if mix["changed"] else "pooled features")
    reasons = verdict_reasons(is_drift, ood)
    result.update(
        status="drift" if reasons else "no_drift",
        reasons=reasons,
        drifted_features=stain if is_drift else [],
        candidate_features=stain,
        case_mix_changed=mix["changed"],
        moved=moved,
        scores=scores,
        covariate_drifted_features=covariate,
        covariate_scores=covariate_scores,
        within_class=within,
        case_mix=mix,
        reference_images=len(reference),
        adjusted_reference_images=len(adjusted),
    )
    return result


def verdict_reasons(stain_drift: bool, ood: dict[str, Any]) -> list[str]:
    """Why a window drifts: REASON_STAIN and/or REASON_OOD; empty when it does not."""
    return ([REASON_STAIN] if stain_drift else []) + ([REASON_OOD] if ood.get("drift") else [])


def _ood_moved(ood: dict[str, Any]) -> str:
    return (
        f"out-of-distribution rate {ood['rate']:.1%} of {ood['images']} images, above the model's "
        f"{ood['reference_rate']:.1%} (binomial p = {ood['p_value']:.2g})"
    )


# ---------------------------------------------------------------- windows


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '24h', '7d', '2w' -> timedelta; a clear error otherwise."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"cannot read duration {text!r}; use a number and a unit s/m/h/d/w, e.g. 24h")
    value = float(match.group(1))
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return timedelta(**{_UNITS[match.group(2).lower()]: value})


def window_from_log(directory: str | Path, since: timedelta | None, version: str | None = None) -> pd.DataFrame:  # noqa: F821
    """The request log's rows (features + predicted class as `class`), optionally one model version only."""
    from monitoring.request_log import read_requests

    frame = read_requests(directory, since)
    skipped = frame.attrs.get("skipped_lines", 0)
    if version is not None:
        frame = frame[frame["version"].astype(str) == str(version)]
    frame = frame.dropna(subset=list(FEATURE_NAMES), how="any")
    frame = frame.rename(columns={"predicted_label": CLASS_COLUMN}).reset_index(drop=True)
    frame.attrs["skipped_lines"] = skipped
    return frame


def window_from_images(directory: str | Path) -> pd.DataFrame:  # noqa: F821
    """Features of every image under `directory`; `class` from a parent folder named like a class, if any."""
    import pandas as pd

    from components import domain
    from components.image_features import encoded_image_features

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder not found: {directory}")
    rows, unreadable = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in domain.IMAGE_SUFFIXES):
        try:
            features = encoded_image_features(path.read_bytes())  # as the served graph computes them
        except ValueError:
            unreadable += 1
            continue
        label = None
        for part in reversed(path.relative_to(directory).parts[:-1]):
            try:
                label = domain.canonical_class(part)
                break
            except ValueError:
                continue
        rows.append({CLASS_COLUMN: label, **features})
    if unreadable:
        log.warning("skipped %d unreadable image(s) under %s", unreadable, directory)
    frame = pd.DataFrame(rows, columns=[CLASS_COLUMN, *FEATURE_NAMES])
    if frame[CLASS_COLUMN].isna().any():  # a partly labelled folder: compare without class information
        frame = frame.drop(columns=[CLASS_COLUMN])
    return frame


def reference_frame(path: str | Path) -> pd.DataFrame:  # noqa: F821
    """A reference file with its label column renamed to `class`."""
    from components.reference.executor import LABEL_COLUMN, load_reference

    frame = load_reference(path)
    if LABEL_COLUMN in frame.columns:
        frame = frame.rename(columns={LABEL_COLUMN: CLASS_COLUMN})
    return frame


def reference_ood_rate(model_dir: str | Path, version: str | None) -> float | None:
    """The served version's `ood_val_referral_rate` from its metadata; None for an older model or no version."""
    from components import model_metadata

    if version is None:
        return None
    meta = model_metadata.read_or_none(Path(model_dir) / str(version))
    return meta.ood_val_referral_rate if meta is not None else None


def resolve_reference(explicit: str | Path | None, model_dir: str | Path, version: str | None = None) -> Path:
    """An explicit --reference, else the reference stored with the model version (see docs/monitoring.md)."""
    from components.reference.executor import find_reference

    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"reference file not found: {path}")
        return path
    found = find_reference(model_dir, version)
    if found is None:
        where = f"{model_dir}/{version}" if version is not None else f"any version under {model_dir}"
        raise FileNotFoundError(
            f"no reference profile in {where} (assets.extra/reference_features.parquet); pass --reference PATH"
        )
    return found


# ---------------------------------------------------------------- the Evidently reports


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
