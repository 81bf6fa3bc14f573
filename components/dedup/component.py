"""KFP component: exact and perceptual duplicate groups; one image kept per group."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def dedup_op(
    manifest: Input[Dataset],
    kept: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
    hamming: int = -1,
) -> int:
    """Deduplicate validate's manifest; `kept` holds kept.csv, groups.json, conflicts.json, dedup.json, report.md (hamming -1: settings default)."""
    import os
    import shutil

    from components.dedup.executor import run_dedup

    os.makedirs(kept.path, exist_ok=True)
    from components import settings as s

    threshold = hamming if hamming >= 0 else s.DEDUP_HAMMING
    result = run_dedup(os.path.join(manifest.path, "manifest.csv"), kept.path, hamming=threshold)
    shutil.copyfile(result["report"], report.path)
    for key in ("images", "kept", "removed", "exact_pairs", "exact_groups", "near_groups"):
        metrics.log_metric(key, result[key])
    metrics.log_metric("conflict_groups", len(result["conflicts"]))
    return int(result["kept"])
