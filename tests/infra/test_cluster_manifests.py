"""The cluster config's manifests: its ConfigMap is the file, the CronJob compiles from it, the claims agree."""

from __future__ import annotations

from infra.helpers import K8S, render
from pipelines import cluster_config


def _by_kind(directory: str) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["metadata"]["name"]): r for r in render(K8S / directory)}


def test_the_configmap_is_rendered_from_the_cluster_config_file():
    resources = _by_kind("cluster")
    assert list(resources) == [("ConfigMap", cluster_config.CONFIG_MAP)]  # no hash suffix: the package names it
    data = resources[("ConfigMap", cluster_config.CONFIG_MAP)]["data"]
    text = cluster_config.DEFAULT_PATH.read_text()
    assert data.pop(cluster_config.CONFIG_MAP_FILE_KEY) == text
    assert data == cluster_config.parse_env_text(text)
    assert data["MLFLOW_TRACKING_URI"] == cluster_config.load(cluster_config.DEFAULT_PATH).mlflow_tracking_uri


def test_the_cronjob_compiles_from_the_mounted_cluster_config():
    resources = _by_kind("monitoring")
    assert ("ConfigMap", cluster_config.CONFIG_MAP) in resources, "the monitoring kustomization includes ../cluster"
    pod = resources[("CronJob", "leukoflow-drift-check")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    command = init["command"]
    assert command[:3] == ["leukoflow", "pipeline", "compile"]
    config_path = command[command.index("--cluster-config") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in init["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == cluster_config.CONFIG_MAP
    assert source["items"] == [{"key": cluster_config.CONFIG_MAP_FILE_KEY, "path": config_path.rsplit("/", 1)[1]}]
    (check,) = pod["containers"]
    package = check["command"][check["command"].index("--pipeline-package") + 1]
    assert package == command[command.index("--output") + 1]


def test_tf_serving_mounts_the_model_store_the_pipeline_promotes_into():
    config = cluster_config.load(cluster_config.DEFAULT_PATH)
    serving = _by_kind("serving")
    assert ("PersistentVolumeClaim", config.model_store_pvc) in serving
    pod = serving[("Deployment", "leukemia-serving")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == config.model_store_pvc
    tfs = next(c for c in pod["containers"] if c["name"] == "tensorflow-serving")
    mount = next(m for m in tfs["volumeMounts"] if m["name"] == "model-store")
    assert mount["mountPath"] == cluster_config.MODEL_STORE_MOUNT and mount["readOnly"] is True
    assert f"--model_config_file={cluster_config.MODEL_STORE_MOUNT}/models.config" in tfs["args"]
    # The drift check reads the served versions' reference profiles from the same claim.
    cron = _by_kind("monitoring")[("CronJob", "leukoflow-drift-check")]["spec"]["jobTemplate"]["spec"]["template"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in cron["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert config.model_store_pvc in claims
