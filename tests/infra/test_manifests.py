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


def _container(serving: dict) -> dict:
    (container,) = serving["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


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
    assert serving["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == serving["Deployment"]["metadata"]["name"]


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
    assert flags["model_config_file"] == f"{config_dir}/models.config"
    assert flags["batching_parameters_file"] == f"{config_dir}/batching.config"
    assert flags["monitoring_config_file"] == f"{config_dir}/monitoring.config"
    assert flags["enable_batching"] == "true"
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    # Only flags tensorflow_model_server really has (a typo makes the binary exit at start).
    known = {
        "port", "rest_api_port", "model_config_file", "model_config_file_poll_wait_seconds",
        "file_system_poll_wait_seconds", "enable_batching", "batching_parameters_file", "monitoring_config_file",
        "enable_model_warmup", "rest_api_timeout_in_ms", "rest_api_num_threads", "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism", "ssl_config_file", "allow_version_labels_for_unavailable_models", "grpc_max_threads", "model_name", "model_base_path",
    }
    assert set(flags) <= known, set(flags) - known


def test_model_store_mount_matches_models_config(serving):
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((REPO / "serving/models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    container = _container(serving)
    store = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
    assert store["readOnly"] is True
    assert model.base_path.startswith(store["mountPath"].rstrip("/") + "/")
    assert model.name == settings.SERVED_MODEL_NAME


def test_ports_and_probes(serving):
    container = _container(serving)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in serving["Service"]["spec"]["ports"]}
    assert service_ports == {"grpc": (8500, "grpc"), "http": (8501, "http")}
    selector = serving["Service"]["spec"]["selector"]
    pod_labels = serving["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    status_path = f"/v1/models/{settings.SERVED_MODEL_NAME}"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": status_path, "port": "http"}, probe


def test_prometheus_path_matches_monitoring_config(serving):
    from infra.tfs_protos import MonitoringConfig

    monitoring = text_format.Parse((REPO / "serving/monitoring.config").read_text(), MonitoringConfig())
    annotations = serving["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
    assert annotations["prometheus.io/port"] == "8501"
