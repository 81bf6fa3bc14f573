"""The drift decision: per-feature distances against a case-mix-adjusted reference, within-class drift,
the case mix and the out-of-distribution rate, combined into one verdict (`decide`). No files, no reports."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from components.host_features import FEATURE_NAMES

if TYPE_CHECKING:
    import pandas as pd

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
OOD_ALPHA = 0.01  # one-sided binomial p-value below which the window's OOD rate rose...
OOD_MIN_RISE = 0.05  # ...and only when it rose by at least this much (absolute) over the reference
REASON_STAIN = "stain_features"  # the verdict's reasons (`reasons` in the summary)
REASON_OOD = "ood_rate"


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
