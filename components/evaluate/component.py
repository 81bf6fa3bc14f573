"""KFP components: evaluate one exported model; compare the evaluations in one markdown table."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_op(
    split: Input[Dataset],
    trained: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[Markdown],
    bootstrap: int = 1000,
    external_dir: str = "",
) -> float:
    """Run components.evaluate.executor.run_evaluate (evaluation/metrics.json); returns the macro-F1."""
    from components.evaluate.compare import comparison_markdown
    from components.evaluate.executor import run_evaluate

    result = run_evaluate(
        split.path, trained.path, evaluation.path, bootstrap=bootstrap, external_dir=external_dir or None
    )
    evaluation.metadata.update({"model": result["model"], "metrics_json": evaluation.path + "/metrics.json"})
    for key in ("accuracy", "macro_f1", "weighted_f1", "robustness_worst", "throughput_b32", "params", "size_bytes"):
        if key in result:
            metrics.log_metric(key, float(result[key]))
    metrics.log_metric("accuracy_ci_low", result["accuracy_ci"][0])
    metrics.log_metric("accuracy_ci_high", result["accuracy_ci"][1])
    metrics.log_metric("macro_f1_ci_low", result["macro_f1_ci"][0])
    metrics.log_metric("macro_f1_ci_high", result["macro_f1_ci"][1])
    metrics.log_metric("latency_b1_p50_ms", result["latency_ms"]["batch1_p50"])
    metrics.log_metric("latency_b1_p95_ms", result["latency_ms"]["batch1_p95"])
    if "shortcut_baseline" in result:
        metrics.log_metric("shortcut_accuracy", result["shortcut_baseline"]["accuracy"])
    classification.log_confusion_matrix(result["class_names"], result["confusion_matrix"])
    with open(report.path, "w") as handle:
        handle.write(comparison_markdown([result]))
    return float(result["macro_f1"])


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def compare_op(evaluations: Input[List[Artifact]], table: Output[Markdown]) -> str:
    """Run components.evaluate.compare.compare over the evaluation artifacts; returns the markdown."""
    from components.evaluate.compare import compare

    return compare([e.path for e in evaluations], table.path)
