"""KFP component: `promote_op` pushes the gate's decision (registry, model store, models.config) under `dsl.If`.

promote_op(gate=gate.outputs["gate"], reference=reference_task.outputs["reference"],
           pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def promote_op(
    gate: Input[Artifact],
    promotion: Output[Artifact],
    model_card: Output[Markdown],
    reference: Input[Dataset] = None,
    drift_report: str = "",
    pipeline_run_id: str = "",
    label: str = "canary",
) -> NamedTuple("PromoteOutputs", [("version", int), ("model_path", str)]):
    """Run components.promote.pusher.executor.apply_decision on the gate's decision (model store, models.config, registry).

    `reference` (optional): the reference step's feature profile, stored in the version for the drift monitor.
    `drift_report`: the drift report that triggered this run, recorded in the registry.
    """
    import shutil
    from collections import namedtuple

    from components.promote.gate.executor import read_decision
    from components.promote.pusher import model_store
    from components.promote.pusher.executor import apply_decision

    result = apply_decision(
        read_decision(gate.path),
        promotion.path,
        label=label,
        pipeline_run_id=pipeline_run_id,
        reference=reference.path if reference is not None else None,
        drift_report=drift_report,
    )
    shutil.copyfile(promotion.path + "/model_card.md", model_card.path)
    path = str(model_store.version_path(result.version))
    promotion.metadata.update(
        {"version": result.version, "label": result.label, "model_path": path, "model": result.chosen}
    )
    print(result.summary)
    return namedtuple("PromoteOutputs", ["version", "model_path"])(result.version, path)
