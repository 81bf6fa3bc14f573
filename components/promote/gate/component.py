"""KFP component: `gate_op` decides (fan-in over the evaluations) and validates the chosen model's serving.

gate_op returns one bool (its single output): the kfp local runner resolves a `dsl.If` condition only on a
task's single `Output`, not on a named output of a NamedTuple. The chosen model and the summary are in the
`gate` artifact's metadata and `decision.json`.

    evals = ...  # inside dsl.ParallelFor: evaluate_op(...).outputs["evaluation"]
    gate = gate_op(evaluations=dsl.Collected(evals), split=split_task.outputs["split"])
    with dsl.If(gate.outputs["Output"] == True):
        promote_op(gate=gate.outputs["gate"], ...)  # components/promote/pusher/component.py
"""

from typing import List

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
    profile: str = "",
) -> bool:
    """Run components.promote.gate.executor.run_gate over the evaluation dirs (each with metrics.json); True to promote.

    Policy parameters left negative take the profile's gate settings, then the settings.GATE_* defaults.
    """
    import shutil

    from components import settings
    from components.promote.gate.executor import run_gate
    from components.promote.gate.policy import Policy

    given = {
        "min_macro_f1": min_macro_f1,
        "min_class_recall": min_class_recall,
        "min_robust_accuracy": min_robust_accuracy,
        "margin": margin,
        "max_regression": max_regression,
    }
    base = settings.profile(profile).gate if profile else {}
    policy = Policy(**{**base, **{k: v for k, v in given.items() if v >= 0}})
    result = run_gate([e.path for e in evaluations], gate.path, split.path, policy)
    shutil.copyfile(gate.path + "/decision.md", decision.path)
    gate.metadata.update({"promote": result.promoted, "model": result.chosen or "", "summary": result.summary})
    print(result.summary)
    return bool(result.promoted)
