"""KFP components: `gate_op` decides (fan-in over the evaluations), `promote_op` promotes under `dsl.If`.

gate_op returns one bool (its single output): the kfp local runner resolves a `dsl.If` condition only on a
task's single `Output`, not on a named output of a NamedTuple. The chosen model and the summary are in the
`gate` artifact's metadata and `decision.json`.

    evals = ...  # inside dsl.ParallelFor: evaluate_op(...).outputs["evaluation"]
    gate = gate_op(evaluations=dsl.Collected(evals), split=split_task.outputs["split"])
    with dsl.If(gate.outputs["Output"] == True):
        promote_op(gate=gate.outputs["gate"], reference=reference_task.outputs["reference"],
                   pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def gate_op(
    evaluations: Input[List[Artifact]],
    split: Input[Dataset],
    gate: Output[Artifact],
    decision: Output[Markdown],
    min_macro_f1: float = -1.0,
    min_class_recall: float = -1.0,
    min_robust_accuracy: float = -1.0,
    margin: float = -1.0,
    max_regression: float = -1.0,
) -> bool:
    """Run components.promote.executor.run_gate over the evaluation dirs (each with metrics.json); True to promote.

    Policy parameters left negative take the settings.GATE_* defaults.
    """
    import shutil

    from components.promote.executor import run_gate
    from components.promote.gate import Policy

    given = {"min_macro_f1": min_macro_f1, "min_class_recall": min_class_recall,
             "min_robust_accuracy": min_robust_accuracy, "margin": margin, "max_regression": max_regression}
    policy = Policy(**{k: v for k, v in given.items() if v >= 0})
    result = run_gate([e.path for e in evaluations], gate.path, split.path, policy)
    shutil.copyfile(gate.path + "/decision.md", decision.path)
    gate.metadata.update({"promote": result.promoted, "model": result.chosen or "", "summary": result.summary})
    print(result.summary)
    return bool(result.promoted)


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def promote_op(
    gate: Input[Artifact],
    promotion: Output[Artifact],
    model_card: Output[Markdown],
    reference: Input[Dataset] = None,
    drift_report: str = "",
    pipeline_run_id: str = "",
    label: str = "stable",
) -> NamedTuple("PromoteOutputs", [("version", int), ("model_path", str)]):
    """Run components.promote.executor.apply_decision on the gate's decision (model store, models.config, registry).

    `reference` (optional): the reference step's feature profile, stored in the version for the drift monitor.
    `drift_report`: the drift report that triggered this run, recorded in the registry.
    """
    import shutil
    from collections import namedtuple

    from components.promote import model_store
    from components.promote.executor import apply_decision, read_decision

    result = apply_decision(read_decision(gate.path), promotion.path, label=label, pipeline_run_id=pipeline_run_id,
                            reference=reference.path if reference is not None else None, drift_report=drift_report)
    shutil.copyfile(promotion.path + "/model_card.md", model_card.path)
    path = str(model_store.version_path(result.version))
    promotion.metadata.update({"version": result.version, "label": label, "model_path": path, "model": result.chosen})
    print(result.summary)
    return namedtuple("PromoteOutputs", ["version", "model_path"])(result.version, path)
