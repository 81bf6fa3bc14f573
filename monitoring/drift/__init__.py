"""The drift check: a window of image features against the served model's reference profile.

Five questions, answered apart so one is not mistaken for another:

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
   in distribution (`in_distribution`). The window's share of images that are not is
   compared with the rate the model's threshold refers on its own validation split
   (`ood_val_referral_rate` in its metadata): one-sided binomial test at OOD_ALPHA, and only a rise of
   at least OOD_MIN_RISE counts. Images another lab's microscope makes are often not "brighter" in the
   colour features at all, only unlike the training images; this catches them.

Constants were calibrated on the real data (checks/drift.py, docs/monitoring.md).
Three modules: `decision` (the statistics and the verdict, `decide`, using Evidently's own
stat-test function), `windows` (what is compared: the request log or a folder of images, and the
served version's reference), `report` (`run_drift_check`: Evidently Reports with the same methods
and thresholds, saved as HTML/JSON and added to a workspace, the verdict taken from the report).
This package re-exports their public names, so `from monitoring import drift; drift.decide(...)`.
"""

from __future__ import annotations

from monitoring.drift.decision import (
    CASE_MIX_ALPHA,
    CASE_MIX_MIN_TVD,
    CLASS_COLUMN,
    METHOD,
    MIN_CLASS_IMAGES,
    MIN_DRIFTED_FEATURES,
    MIN_IMAGES,
    OOD_ALPHA,
    OOD_MIN_RISE,
    REASON_OOD,
    REASON_STAIN,
    SAMPLE_SEED,
    THRESHOLD_FLOOR,
    THRESHOLD_SCALE,
    adjusted_reference,
    case_mix,
    decide,
    drifted,
    feature_scores,
    feature_threshold,
    out_of_distribution,
    verdict_reasons,
)
from monitoring.drift.report import (
    PROJECT_NAME,
    public_result,
    report_scores,
    run_drift_check,
    summary_html,
)
from monitoring.drift.windows import (
    parse_duration,
    reference_frame,
    reference_ood_rate,
    resolve_reference,
    window_from_images,
    window_from_log,
)

__all__ = [
    "CASE_MIX_ALPHA",
    "CASE_MIX_MIN_TVD",
    "CLASS_COLUMN",
    "METHOD",
    "MIN_CLASS_IMAGES",
    "MIN_DRIFTED_FEATURES",
    "MIN_IMAGES",
    "OOD_ALPHA",
    "OOD_MIN_RISE",
    "PROJECT_NAME",
    "REASON_OOD",
    "REASON_STAIN",
    "SAMPLE_SEED",
    "THRESHOLD_FLOOR",
    "THRESHOLD_SCALE",
    "adjusted_reference",
    "case_mix",
    "decide",
    "drifted",
    "feature_scores",
    "feature_threshold",
    "out_of_distribution",
    "parse_duration",
    "public_result",
    "reference_frame",
    "reference_ood_rate",
    "report_scores",
    "resolve_reference",
    "run_drift_check",
    "summary_html",
    "verdict_reasons",
    "window_from_images",
    "window_from_log",
]
