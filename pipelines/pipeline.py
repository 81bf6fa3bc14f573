"""The leukoflow pipeline: data checks, three trainings in parallel, evaluation, the gate, promotion.

Runs on a Kubeflow cluster from the compiled IR YAML, and whole, here, under
`kfp.local.SubprocessRunner(use_venv=False)` (see pipelines/local.py).
"""

from pathlib import Path

from kfp import compiler, dsl

from components import settings
from components.dedup.component import dedup_op
from components.evaluate.component import compare_op, evaluate_op
from components.preprocess.component import preprocess_op
from components.promote.gate.component import gate_op
from components.promote.pusher.component import promote_op
from components.reference.component import reference_op
from components.split.component import split_op
from components.train.component import train_op
from components.validate.component import validate_op

PIPELINE_NAME = "leukoflow"

# Kubernetes resources of one training task; locally they are ignored.
TRAIN_CPU, TRAIN_MEMORY = "4", "16G"
TRAIN_ACCELERATOR = "nvidia.com/gpu"
DATA_CPU, DATA_MEMORY = "2", "4G"


def _steps(
    data_dir, profile, models, weights, seed, dedup_hamming, drift_report, promote, external_ood_dir, mount_data=None
) -> None:
    """The pipeline's tasks; `mount_data(task)` attaches the dataset volume to the tasks that read raw images."""
    validate = validate_op(data_dir=data_dir)
    dedup = dedup_op(manifest=validate.outputs["manifest"], hamming=dedup_hamming)
    preprocess = preprocess_op(kept=dedup.outputs["kept"], profile=profile)
    split = split_op(kept=dedup.outputs["kept"], preprocessed=preprocess.outputs["shards"], seed=seed)
    for task in (validate, dedup, preprocess, split):
        task.set_cpu_request(DATA_CPU).set_memory_request(DATA_MEMORY)
    if mount_data:
        for task in (validate, dedup, preprocess):
            mount_data(task)

    reference = reference_op(split=split.outputs["split"])

    with dsl.ParallelFor(models, parallelism=2) as model_name:
        train = train_op(
            split=split.outputs["split"], model_name=model_name, profile=profile, weights=weights, seed=seed
        )
        train.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
        train.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(1)
        train.set_retry(num_retries=2, backoff_duration="60s")
        evaluate = evaluate_op(
            split=split.outputs["split"], trained=train.outputs["trained"], external_dir=external_ood_dir
        )
        evaluate.set_cpu_request(DATA_CPU).set_memory_request(TRAIN_MEMORY)
        if mount_data:  # the external smears (external_ood_dir) live on the dataset volume
            mount_data(evaluate)

    compare_op(evaluations=dsl.Collected(evaluate.outputs["evaluation"]))

    gate = gate_op(
        evaluations=dsl.Collected(evaluate.outputs["evaluation"]), split=split.outputs["split"], profile=profile
    )
    with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        with dsl.If(promote == True, name="promotion-enabled"):  # noqa: E712
            promote_task = promote_op(
                gate=gate.outputs["gate"],
                reference=reference.outputs["reference"],
                drift_report=drift_report,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            promote_task.set_caching_options(False)


def make_pipeline(data_pvc: str | None = None):
    """The pipeline function; with `data_pvc`, the data steps mount that claim at /data (cluster runs)."""
    mount_data = None
    if data_pvc:
        from kfp import kubernetes

        def mount_data(task):
            kubernetes.mount_pvc(task, pvc_name=data_pvc, mount_path="/data")

    @dsl.pipeline(
        name=PIPELINE_NAME, description="Leukemia blood-smear stage classifier: data, three models, gate, serving."
    )
    def leukoflow_pipeline(
        data_dir: str = "/data",
        profile: str = "quick",
        models: list = list(settings.MODEL_NAMES),  # noqa: B006 (KFP reads the default at definition time)
        weights: str = "{}",
        seed: int = settings.SEED,
        dedup_hamming: int = settings.DEDUP_HAMMING,
        drift_report: str = "",
        promote: bool = True,
        external_ood_dir: str = settings.EXTERNAL_OOD_DIR,
    ):
        """Validate, dedup, preprocess and split the data; train three models in parallel; evaluate, gate, promote."""
        _steps(
            data_dir, profile, models, weights, seed, dedup_hamming, drift_report, promote, external_ood_dir, mount_data
        )

    return leukoflow_pipeline


leukoflow_pipeline = make_pipeline()


def compile_pipeline(output: str | Path, data_pvc: str | None = None) -> Path:
    """Write the KFP IR YAML for a cluster."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=make_pipeline(data_pvc), package_path=str(output))
    return output
