"""The KServe alternative (infra/k8s/kserve): an InferenceService on the TF Serving runtime, gRPC on its h2c port.

Validated against tests/infra/kserve_inferenceservice_v0.15.schema.json (the InferenceService fields leukoflow
uses, KServe v0.15) and, for the Kubernetes Container fields of the model spec, against Kubernetes' own schema.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.helpers import K8S, KUBERNETES_VERSION, render

SCHEMA = json.loads((Path(__file__).parent / "kserve_inferenceservice_v0.15.schema.json").read_text())
KSERVE_ONLY = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")


@pytest.fixture(scope="module")
def isvc() -> dict:
    (resource,) = render(K8S / "kserve")
    return resource


def _validate_container(model: dict) -> None:
    """The model spec is a Kubernetes Container plus KServe's fields: check the Container part as one."""
    container = {k: v for k, v in model.items() if k not in KSERVE_ONLY}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [{"name": "kserve-container", "image": "tensorflow/serving", **container}]},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_inferenceservice_matches_the_kserve_schema(isvc):
    jsonschema.validate(isvc, SCHEMA)
    _validate_container(isvc["spec"]["predictor"]["model"])


def test_canary_traffic_on_the_tf_serving_runtime_over_grpc(isvc):
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert 0 < predictor["canaryTrafficPercent"] < 100
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert model["modelFormat"]["name"] == "tensorflow" and model["runtime"] == "kserve-tensorflow-serving"
    assert model["protocolVersion"] == "grpc-v1"
    (port,) = model["ports"]  # Knative routes one port; h2c makes it HTTP/2 (gRPC) end to end
    assert port == {"name": "h2c", "containerPort": 9000, "protocol": "TCP"}
    # the same TF Serving release as the Deployment in infra/k8s/serving
    serving = yaml.safe_load((K8S / "serving" / "kustomization.yaml").read_text())
    tag = next(i["newTag"] for i in serving["images"] if i["name"] == "tensorflow/serving")
    assert model["runtimeVersion"] == tag


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["spec"]["predictor"].update(canaryTrafficPercent=150),
        lambda r: r["spec"]["predictor"].update(canaryTraficPercent=10),  # a typo is not ignored
        lambda r: r["spec"]["predictor"]["model"].update(protocolVersion="grpc"),
        lambda r: r["spec"]["predictor"]["model"].pop("modelFormat"),
    ],
)
def test_the_schema_refuses_what_kserve_would(isvc, change):
    bad = copy.deepcopy(isvc)
    change(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_a_bad_container_port_is_refused(isvc):
    model = copy.deepcopy(isvc["spec"]["predictor"]["model"])
    model["ports"][0]["containerPort"] = "9000"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_container(model)
