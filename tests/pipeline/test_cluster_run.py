"""The compiled package runs with only what its spec gives it, and a drift verdict's run promotes.

Each task of the COMPILED YAML runs in its own sandboxed process (tests/pipeline/ir_runner.py): a fresh root,
an environment from the image's ENV and the task's own declarations, each declared PVC bound to its own
folder, a real `mlflow server` on 127.0.0.1 as the tracking server. The run must end with a version in the
model-store folder that `leukoflow serve --model_config_file` loads and answers, and a registered version in
that server; a run whose package lacks the promote step's model-store mount must fail that same check.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures.synthetic import make_synthetic_dataset
from PIL import Image

from pipeline import cluster_packages
from pipeline.ir_runner import Cluster, read_package, run_package, run_task, start_in_sandbox
from pipelines import cluster_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DATA_PVC, STORE_PVC = "leukoflow-data", "leukemia-model-store"
SMOKE = {"profile": "smoke", "models": ["cnn"]}  # run parameters, as a run's submitter sets them
REPORT = "/var/lib/leukoflow/reports/drift/20261207T0307/report.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started, with everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 'cluster': the data and model-store claims as folders, the tracking server, the cluster config."""
    base = tmp_path_factory.mktemp("cluster")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LEUKOFLOW_"))}
    mlflow = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination",
            str(base / "mlartifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        data = base / "pvc-data"
        make_synthetic_dataset(data, per_class=24, size=32, seed=3)
        external = data / "external" / "other-lab"  # the other lab's smears, on the data volume
        external.mkdir(parents=True)
        for i in range(8):
            Image.effect_noise((32, 32), 40 + 5 * i).convert("RGB").save(external / f"smear_{i}.png")
        store = base / "pvc-model-store"
        store.mkdir()
        config_file = base / "cluster.env"
        config_file.write_text(
            "\n".join(
                [
                    "LEUKOFLOW_IMAGE=ghcr.io/leukoflow/leukoflow:test",
                    f"LEUKOFLOW_DATA_PVC={DATA_PVC}",
                    "LEUKOFLOW_EXTERNAL_OOD_DIR=/data/external/other-lab",
                    f"LEUKOFLOW_MODEL_STORE_PVC={STORE_PVC}",
                    f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}",
                ]
            )
            + "\n"
        )
        package = cluster_packages.compile_package(config_file, base / "pipeline.yaml")
        # The ConfigMap kustomize renders from the same file (infra/k8s/cluster/kustomization.yaml).
        config_map = cluster_config.parse_env_text(config_file.read_text())
        config_map[cluster_config.CONFIG_MAP_FILE_KEY] = config_file.read_text()
        _wait_http(f"http://127.0.0.1:{port}/health", mlflow, timeout_s=180)
        yield {
            "cluster": Cluster(
                pvcs={DATA_PVC: data, STORE_PVC: store}, config_maps={cluster_config.CONFIG_MAP: config_map}
            ),
            "store": store,
            "tracking_uri": f"http://127.0.0.1:{port}",
            "config_file": config_file,
            "package": package,
            "work": base / "runner",
            "data": data,
        }
    finally:
        _stop(mlflow)


def registered_versions(tracking_uri: str) -> dict[int, dict[str, str]]:
    from mlflow import MlflowClient

    from components import settings

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return {
        int(v.version): dict(v.tags) for v in client.search_model_versions(f"name='{settings.REGISTERED_MODEL_NAME}'")
    }


def check_promoted(cluster: dict, package: Path, before: set[int]) -> int:
    """The run registered one new version in the tracking server, and that version is in the model-store folder
    with the label a promotion gives it in models.config: `stable` for the first version, `canary` after (the
    staged rollout). Returns the version; a clear AssertionError otherwise."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    _, platform = read_package(package)
    promote = platform.get("exec-promote-op", {})
    new = sorted(set(registered_versions(cluster["tracking_uri"])) - before)
    assert len(new) == 1, (
        f"the tracking server at {cluster['tracking_uri']} got versions {new} from this run, expected one: does "
        f"the promote task take MLFLOW_TRACKING_URI from the ConfigMap? its declarations: {promote}"
    )
    (version,) = new
    store = cluster["store"]
    in_store = sorted(p.name for p in (store / "leukemia").iterdir()) if (store / "leukemia").is_dir() else []
    assert (store / "leukemia" / str(version) / "saved_model.pb").is_file(), (
        f"the promote step registered version {version}, but the model-store folder holds {in_store}: the "
        f"version went to the task's own container filesystem. Does the promote task mount the model-store "
        f"PVC {STORE_PVC!r}? its declarations: {promote}"
    )
    config = text_format.Parse(
        (store / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    ).model_config_list.config[0]
    label = "canary" if before else "stable"
    assert config.version_labels[label] == version, f"version {version} should be {label}: {config.version_labels}"
    assert config.base_path == f"{cluster_config.MODEL_STORE_MOUNT}/leukemia"  # where TF Serving mounts the store
    return version


class FakeKfpClient:
    """kfp.Client as the trigger uses it: hands the submitted package to the IR runner."""

    submitted: list[dict] = []
    cluster: dict = {}

    def __init__(self, host=None, **_):
        self.host = host

    def create_run_from_pipeline_package(self, pipeline_file, arguments, run_name, experiment_name, namespace=None):
        package = Path(pipeline_file)
        started = time.monotonic()
        result = run_package(package, arguments, self.cluster["cluster"], self.cluster["work"])
        FakeKfpClient.submitted.append(
            {
                "package": package.read_bytes(),
                "arguments": arguments,
                "result": result,
                "wall_s": time.monotonic() - started,
            }
        )

        class Run:
            run_id = f"fake-{len(FakeKfpClient.submitted)}"

        return Run()


@pytest.fixture(scope="module")
def triggered_run(cluster, tmp_path_factory):
    """A drift verdict: the trigger submits the package the CronJob compiles, which the IR runner executes."""
    import kfp

    from monitoring import trigger

    work = tmp_path_factory.mktemp("cronjob")
    package = cluster_packages.drift_trigger_package(cluster["config_file"], work / "work")
    FakeKfpClient.cluster, FakeKfpClient.submitted = cluster, []
    saved, kfp.Client = kfp.Client, FakeKfpClient
    try:
        verdict = {"status": "drift", "reference": "version 0", "report_json": REPORT}
        config = trigger.TriggerConfig(
            host="http://ml-pipeline.kubeflow.svc.cluster.local:8888",
            package=str(package),
            arguments=dict(SMOKE),
            state_file=work / "trigger_state.json",
        )
        outcome = trigger.maybe_trigger(verdict, config)
    finally:
        kfp.Client = saved
    assert outcome["triggered"], outcome
    (submission,) = FakeKfpClient.submitted
    assert submission["result"].succeeded, submission["result"].explain()
    return {"submission": submission, "version": check_promoted(cluster, package, set()), "package": package}


def test_every_task_ran_in_its_own_sandboxed_process(triggered_run):
    executors = [t.executor for t in triggered_run["submission"]["result"].tasks]
    for name in ("validate", "dedup", "preprocess", "split", "reference", "train", "evaluate", "gate", "promote"):
        assert f"exec-{name}-op" in executors, executors
    assert len(executors) == len(set(executors))  # one model: each task once
    print(f"IR run: {len(executors)} tasks in {triggered_run['submission']['wall_s']:.0f} s")


def test_a_drift_verdict_runs_the_compiled_package_and_promotes(triggered_run, cluster):
    submission = triggered_run["submission"]
    assert submission["package"] == cluster["package"].read_bytes(), "the CronJob's package is not compile's"
    assert submission["arguments"] == {**SMOKE, "drift_report": REPORT}
    assert triggered_run["version"] == 1
    tags = registered_versions(cluster["tracking_uri"])[1]
    assert tags["status"] == "promoted" and tags["model_path"] == "/models/leukemia/1"
    assert tags["drift_report"] == REPORT and tags["pipeline_run_id"] not in ("", "manual")


def test_tf_serving_layout_in_the_store_is_served(triggered_run, cluster):
    """`leukoflow serve --model_config_file` on the store, mounted at /models as TF Serving's Deployment does."""
    from serving.client import ServingClient

    port = _free_port()
    argv = ["python3", "-m", "pipelines.cli", "serve", "--port", str(port), "--rest_api_port", "-1"]
    argv += ["--model_config_file", "/models/models.config", "--request_log_dir", "none"]
    server, root = start_in_sandbox(argv, {"/models": cluster["store"]}, cluster["work"])
    image = next((cluster["data"] / "Pro").glob("*.jpg")).read_bytes()
    try:
        deadline, answer, error = time.monotonic() + 120, None, None
        with ServingClient(target=f"127.0.0.1:{port}") as client:
            while answer is None and time.monotonic() < deadline and server.poll() is None:
                try:
                    answer = client.predict([image], label="stable")
                except Exception as exc:  # not up yet
                    error = exc
                    time.sleep(1)
        output = "" if server.poll() is None else server.stdout.read()[-3000:]
        assert answer is not None, f"no answer from the served store: {error}\n{output}"
        assert answer[0].model_version == triggered_run["version"]
        assert abs(sum(answer[0].confidences.values()) - 1.0) < 1e-3
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


def _promote_inputs(run_dir: Path) -> dict:
    """The promote task's inputs from a finished run's artifact store, as KFP hands them to a retried task."""
    from kfp import dsl

    return {
        "gate": dsl.Artifact(name="gate", uri=str(run_dir / "gate-op" / "gate"), metadata={}),
        "reference": dsl.Dataset(name="reference", uri=str(run_dir / "reference-op" / "reference"), metadata={}),
        "pipeline_run_id": "retried-promote",
    }


def test_without_the_model_store_mount_the_same_check_fails(triggered_run, cluster, tmp_path):
    """Remove one declaration (the promote task's model-store mount): the check fails and says which."""
    inputs = _promote_inputs(triggered_run["submission"]["result"].run_dir)
    package = triggered_run["package"]

    before = set(registered_versions(cluster["tracking_uri"]))  # the task as compiled passes the check
    result = run_task(package, "promote-op", inputs, cluster["cluster"], cluster["work"])
    assert result.succeeded, result.explain()
    assert check_promoted(cluster, package, before) == max(before) + 1

    documents = list(yaml.safe_load_all(package.read_text()))
    del documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-promote-op"]["pvcMount"]
    stripped = tmp_path / "pipeline.yaml"
    stripped.write_text(yaml.safe_dump_all(documents, sort_keys=True))
    before = set(registered_versions(cluster["tracking_uri"]))
    result = run_task(stripped, "promote-op", inputs, cluster["cluster"], cluster["work"])
    with pytest.raises(
        AssertionError, match="model-store folder holds .* Does the promote task mount the model-store"
    ) as err:
        if not result.succeeded:
            raise AssertionError(result.explain())
        check_promoted(cluster, stripped, before)
    print(f"without the mount: {str(err.value).splitlines()[0]}")
