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
from pipelines import cluster_config
from pipelines.cluster_config import ClusterConfig

PIPELINE_NAME = "leukoflow"

# Kubernetes resources of one training task; locally they are ignored.
TRAIN_CPU, TRAIN_MEMORY = "4", "16G"
TRAIN_ACCELERATOR = cluster_config.DEFAULT_TRAIN_ACCELERATOR
DATA_CPU, DATA_MEMORY = "2", "4G"


class Declarations:
    """What each task needs from the cluster, declared in the IR through kfp-kubernetes and container env.

    Each task gets only its own: the data steps the data (and cases) volume, evaluate the data volume (the
    external smears), the gate the tracking server (it reads the champion), promote the tracking server
    and the model-store volume, with models.config on that volume. Without a config (local runs) no volume
    or env is declared; training still asks for one nvidia.com/gpu.
    """

    def __init__(self, cluster: ClusterConfig | None = None):
        self.cluster = cluster

    def data_step(self, task) -> None:
        if not self.cluster:
            return
        from kfp import kubernetes

        kubernetes.mount_pvc(task, pvc_name=self.cluster.data_pvc, mount_path=cluster_config.DATA_MOUNT)
        if self.cluster.cases_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.cluster.cases_pvc, mount_path=cluster_config.CASES_MOUNT)

    def validate(self, task) -> None:
        self.data_step(task)
        if self.cluster and self.cluster.dvc_remote:
            from kfp import kubernetes

            task.set_env_variable("LEUKOFLOW_DVC_REMOTE", self.cluster.dvc_remote)
            keys = {key: key for key in cluster_config.DVC_SECRET_KEYS}
            kubernetes.use_secret_as_env(task, secret_name=self.cluster.dvc_secret, secret_key_to_env=keys)

    def train(self, task) -> None:
        """One accelerator of the configured kind (nvidia.com/gpu without a config); none when it says "none"."""
        accelerator = self.cluster.train_accelerator if self.cluster else TRAIN_ACCELERATOR
        if accelerator != cluster_config.NO_ACCELERATOR:
            task.set_accelerator_type(accelerator).set_accelerator_limit(1)

    def evaluate(self, task) -> None:
        if not self.cluster:
            return
        from kfp import kubernetes

        kubernetes.mount_pvc(task, pvc_name=self.cluster.data_pvc, mount_path=cluster_config.DATA_MOUNT)

    def tracking(self, task) -> None:
        if not self.cluster:
            return
        from kfp import kubernetes

        kubernetes.use_config_map_as_env(
            task,
            config_map_name=cluster_config.CONFIG_MAP,
            config_map_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
        )

    def promote(self, task) -> None:
        self.tracking(task)
        if not self.cluster:
            return
        from kfp import kubernetes

        store = cluster_config.MODEL_STORE_MOUNT
        kubernetes.mount_pvc(task, pvc_name=self.cluster.model_store_pvc, mount_path=store)
        task.set_env_variable("LEUKOFLOW_MODEL_BASE", store)
        task.set_env_variable("LEUKOFLOW_MODELS_CONFIG", f"{store}/models.config")


def _steps(
    data_dir, profile, models, weights, seed, dedup_hamming, drift_report, promote, external_ood_dir, declare
) -> None:
    """The pipeline's tasks; `declare` adds what each needs from the cluster."""
    validate = validate_op(data_dir=data_dir)
    dedup = dedup_op(manifest=validate.outputs["manifest"], hamming=dedup_hamming)
    preprocess = preprocess_op(kept=dedup.outputs["kept"], profile=profile)
    split = split_op(kept=dedup.outputs["kept"], preprocessed=preprocess.outputs["shards"], seed=seed)
    for task in (validate, dedup, preprocess, split):
        task.set_cpu_request(DATA_CPU).set_memory_request(DATA_MEMORY)
    # A cache key sees `data_dir`, not what the volume holds: a cached validate would train on the old data.
    validate.set_caching_options(False)
    declare.validate(validate)
    for task in (dedup, preprocess):
        declare.data_step(task)

    reference = reference_op(split=split.outputs["split"])

    with dsl.ParallelFor(models, parallelism=2) as model_name:
        train = train_op(
            split=split.outputs["split"], model_name=model_name, profile=profile, weights=weights, seed=seed
        )
        train.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
        declare.train(train)
        train.set_retry(num_retries=2, backoff_duration="60s")
        evaluate = evaluate_op(
            split=split.outputs["split"], trained=train.outputs["trained"], external_dir=external_ood_dir
        )
        evaluate.set_cpu_request(DATA_CPU).set_memory_request(TRAIN_MEMORY)
        declare.evaluate(evaluate)  # the external smears (external_ood_dir) live on the data volume

    compare_op(evaluations=dsl.Collected(evaluate.outputs["evaluation"]))

    gate = gate_op(
        evaluations=dsl.Collected(evaluate.outputs["evaluation"]), split=split.outputs["split"], profile=profile
    )
    declare.tracking(gate)  # the gate compares against the registry's champion
    with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        with dsl.If(promote == True, name="promotion-enabled"):  # noqa: E712
            promote_task = promote_op(
                gate=gate.outputs["gate"],
                reference=reference.outputs["reference"],
                drift_report=drift_report,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            promote_task.set_caching_options(False)
            declare.promote(promote_task)


def make_pipeline(cluster: ClusterConfig | None = None):
    """The pipeline function; with a cluster config, each task declares the volumes and env it needs there."""
    declare = Declarations(cluster)
    default_external = cluster.external_ood_dir if cluster else settings.EXTERNAL_OOD_DIR

    @dsl.pipeline(
        name=PIPELINE_NAME, description="Leukemia blood-smear stage classifier: data, three models, gate, serving."
    )
    def leukoflow_pipeline(
        data_dir: str = cluster_config.DATA_MOUNT,
        profile: str = "quick",
        models: list = list(settings.MODEL_NAMES),  # noqa: B006 (KFP reads the default at definition time)
        weights: str = "{}",
        seed: int = settings.SEED,
        dedup_hamming: int = settings.DEDUP_HAMMING,
        drift_report: str = "",
        promote: bool = True,
        external_ood_dir: str = default_external,
    ):
        """Validate, dedup, preprocess and split the data; train three models in parallel; evaluate, gate, promote."""
        _steps(
            data_dir, profile, models, weights, seed, dedup_hamming, drift_report, promote, external_ood_dir, declare
        )

    return leukoflow_pipeline


leukoflow_pipeline = make_pipeline()


def compile_pipeline(output: str | Path, cluster: ClusterConfig) -> Path:
    """Write the KFP IR YAML for the cluster `cluster` describes: every task runs `cluster.image`.

    The same config always gives the same bytes (compile, schedule and the drift CronJob rely on it).
    """
    import tempfile

    import yaml

    from components import atomic_files

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline_func=make_pipeline(cluster), package_path=str(raw))
        documents = list(yaml.safe_load_all(raw.read_text()))
    # The components name settings.COMPONENT_IMAGE when they are defined; the cluster's image replaces it.
    for executor in documents[0]["deploymentSpec"]["executors"].values():
        executor["container"]["image"] = cluster.image
    text = yaml.safe_dump_all(documents, sort_keys=True, default_flow_style=False)
    atomic_files.write_text(output, text)
    return output
