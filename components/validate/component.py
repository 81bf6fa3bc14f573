"""KFP component: validate the raw images (manifest, quarantine, Great Expectations suite and Data Docs)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def validate_op(
    data_dir: str,
    manifest: Output[Dataset],
    data_docs: Output[HTML],
    report: Output[Markdown],
    metrics: Output[Metrics],
    variant: str = "original",
    min_per_class: int = -1,
) -> int:
    """Validate `data_dir`; `manifest` holds manifest.csv, quarantine.csv, validation.json and the Data Docs site; fails on a critical expectation (-1: settings default)."""
    import os

    from components.validate.executor import failure_message, publish_docs, report_markdown, run_validate

    os.makedirs(manifest.path, exist_ok=True)
    from components import settings as s

    minimum = min_per_class if min_per_class >= 0 else s.MIN_IMAGES_PER_CLASS
    result = run_validate(data_dir, manifest.path, variant=variant, min_per_class=minimum)
    publish_docs(result, data_docs.path)
    with open(report.path, "w") as handle:
        handle.write(report_markdown(result))
    metrics.log_metric("images", result["images"])
    metrics.log_metric("valid", result["valid"])
    metrics.log_metric("quarantined", len(result["quarantined"]))
    metrics.log_metric("failed_expectations", len(result["failed_expectations"]))
    if not result["success"]:
        raise RuntimeError(failure_message(result))
    return int(result["valid"])
