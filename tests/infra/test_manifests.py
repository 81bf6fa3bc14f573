"""Every kustomization under infra/k8s renders and validates; the serving base matches serving/*.config."""

from __future__ import annotations

import kubernetes_validate
import pytest
from google.protobuf import text_format

from components import settings
from infra.helpers import K8S, KUBERNETES_VERSION, REPO, kustomization_dirs, render

SERVING_CONFIGS = ("models.config", "batching.config", "monitoring.config")


@pytest.fixture(scope="module")
def serving() -> dict[str, dict]:
    """The serving base's resources by kind."""
    resources = render(K8S / "serving")
    by_kind = {r["kind"]: r for r in resources}
    assert len(by_kind) == len(resources), "one resource of each kind expected in the serving base"
    return by_kind


def _containers(serving: dict) -> dict[str, dict]:
    return {c["name"]: c for c in serving["Deployment"]["spec"]["template"]["spec"]["containers"]}


def _container(serving: dict) -> dict:
    """TF Serving's container (the request-logging proxy runs beside it)."""
    return _containers(serving)["tensorflow-serving"]


def _flags(container: dict) -> dict[str, str]:
    args = container.get("command", [])[1:] + container.get("args", [])
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--"))


def test_kustomizations_are_discovered():
    dirs = {d.relative_to(K8S).as_posix() for d in kustomization_dirs()}
    assert "serving" in dirs


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda d: d.relative_to(K8S).as_posix())
def test_renders_and_validates(directory):
    resources = render(directory)
    assert resources, f"{directory} renders nothing"
    for resource in resources:
        name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{directory.name}: {name} is invalid for Kubernetes {KUBERNETES_VERSION}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            # Custom resources (e.g. monitoring.coreos.com ServiceMonitor) have no built-in schema;
            # a built-in group without one is a typo in apiVersion or kind.
            group = resource["apiVersion"].rpartition("/")[0]
            assert "." in group and not group.endswith(".k8s.io"), f"{name}: no schema for {resource['apiVersion']}"
            assert resource.get("metadata", {}).get("name") and "spec" in resource, f"{name}: malformed custom resource"


def test_serving_base_has_the_expected_resources(serving):
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "PersistentVolumeClaim"} <= set(serving)
    assert serving["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert (
        serving["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == serving["Deployment"]["metadata"]["name"]
    )


def test_runs_pinned_tensorflow_serving(serving):
    image = _container(serving)["image"]
    repo, _, tag = image.partition(":")
    assert repo == "tensorflow/serving" and tag.startswith("2.") and tag != "latest", image


def test_configmap_holds_exactly_serving_configs(serving):
    data = serving["ConfigMap"]["data"]
    assert set(data) == set(SERVING_CONFIGS)
    for name in SERVING_CONFIGS:
        assert data[name] == (REPO / "serving" / name).read_text(), f"ConfigMap {name} differs from serving/{name}"


def test_flags_point_at_the_mounted_configs(serving):
    container = _container(serving)
    flags = _flags(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in serving["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == serving["ConfigMap"]["metadata"]["name"]
    assert "subPath" not in next(m for m in container["volumeMounts"] if m["name"] == config_volume)
    config_dir = mounts[config_volume]
    # models.config is read from the model store (the promote step rewrites it there), seeded from the ConfigMap.
    assert flags["model_config_file"] == f"{mounts['model-store']}/models.config"
    (seed,) = serving["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    seed_mounts = {m["name"]: m["mountPath"] for m in seed["volumeMounts"]}
    assert (
        f"cp {seed_mounts[config_volume]}/models.config {seed_mounts['model-store']}/models.config"
        in seed["command"][-1]
    )
    assert seed_mounts["model-store"] == mounts["model-store"]
    assert flags["batching_parameters_file"] == f"{config_dir}/batching.config"
    assert flags["monitoring_config_file"] == f"{config_dir}/monitoring.config"
    assert flags["enable_batching"] == "true"
    assert flags["port"] == "9000" and flags["rest_api_port"] == "9001"  # behind the proxy
    # Only flags tensorflow_model_server really has (a typo makes the binary exit at start).
    known = {
        "port",
        "rest_api_port",
        "model_config_file",
        "model_config_file_poll_wait_seconds",
        "file_system_poll_wait_seconds",
        "enable_batching",
        "batching_parameters_file",
        "monitoring_config_file",
        "enable_model_warmup",
        "rest_api_timeout_in_ms",
        "rest_api_num_threads",
        "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism",
        "ssl_config_file",
        "allow_version_labels_for_unavailable_models",
        "grpc_max_threads",
        "model_name",
        "model_base_path",
    }
    assert set(flags) <= known, set(flags) - known


def test_model_store_mount_matches_models_config(serving):
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (REPO / "serving/models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    container = _container(serving)
    store = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
    assert store["readOnly"] is True
    assert model.base_path.startswith(store["mountPath"].rstrip("/") + "/")
    assert model.name == settings.SERVED_MODEL_NAME


def test_ports_and_probes(serving):
    container = _container(serving)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"tfs-grpc": 9000, "tfs-http": 9001}
    proxy_ports = {p["name"]: p["containerPort"] for p in _containers(serving)["leukoflow-proxy"]["ports"]}
    assert proxy_ports == {"grpc": 8500, "http": 8501, "proxy-metrics": 8502}
    # Clients reach the proxy only: the Service targets its named ports.
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in serving["Service"]["spec"]["ports"]}
    assert service_ports == {"grpc": (8500, "grpc"), "http": (8501, "http")}
    selector = serving["Service"]["spec"]["selector"]
    pod_labels = serving["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    status_path = f"/v1/models/{settings.SERVED_MODEL_NAME}"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": status_path, "port": "tfs-http"}, probe


def _cli_flags(container: dict) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in container.get("args", []) if a.startswith("--"))


def test_proxy_sidecar_fronts_tf_serving_and_writes_the_request_log(serving):
    """client -> proxy (8500/8501) -> TF Serving (localhost 9000/9001); proxy -> request-log volume."""
    from typer.testing import CliRunner

    from monitoring.cli import app

    proxy = _containers(serving)["leukoflow-proxy"]
    assert proxy["command"] == ["leukoflow", "monitor", "proxy"]
    flags = _cli_flags(proxy)
    tfs = _flags(_container(serving))
    assert flags["upstream-grpc"] == f"127.0.0.1:{tfs['port']}"
    assert flags["upstream-rest"] == f"127.0.0.1:{tfs['rest_api_port']}"
    assert (flags["grpc-port"], flags["rest-port"]) == ("8500", "8501")
    # Every flag is one the CLI has (a typo would crash the sidecar at start).
    help_text = CliRunner().invoke(app, ["proxy", "--help"], terminal_width=200, env={"COLUMNS": "200"}).output
    for flag in flags:
        assert f"--{flag}" in help_text, flag
    assert "$(POD_NAME)" in flags["log-file"]  # one file per pod on the shared volume
    assert any(e["name"] == "POD_NAME" for e in proxy["env"])
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "request-log")
    assert not mount.get("readOnly") and flags["request-log-dir"] == mount["mountPath"]
    volumes = {v["name"]: v for v in serving["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["request-log"]["persistentVolumeClaim"]["claimName"]

    # The drift CronJob reads the same claim, at the path its LEUKOFLOW_HOME's request log lives.
    monitoring = {(r["kind"], r["metadata"]["name"]): r for r in render(K8S / "monitoring")}
    assert "ReadWriteMany" in monitoring[("PersistentVolumeClaim", claim)]["spec"]["accessModes"]
    cron = monitoring[("CronJob", "leukoflow-drift-check")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    check = next(c for c in cron["containers"] if c["name"] == "drift-check")
    log_volume = next(
        v["name"] for v in cron["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    )
    read_mount = next(m for m in check["volumeMounts"] if m["name"] == log_volume)
    home_dir = next(e["value"] for e in check["env"] if e["name"] == "LEUKOFLOW_HOME")
    assert read_mount["readOnly"] is True and read_mount["mountPath"] == f"{home_dir}/requests"


def test_prometheus_path_matches_monitoring_config(serving):
    from infra.tfs_protos import MonitoringConfig

    monitoring = text_format.Parse((REPO / "serving/monitoring.config").read_text(), MonitoringConfig())
    annotations = serving["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
    assert annotations["prometheus.io/port"] == "8501"
