"""The IR runner's sandbox gives a task only what its spec declares (fast checks of tests/pipeline/ir_runner.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from pipeline.ir_runner import REPO, Cluster, Sandbox, SpecError, copy_image_source, image_env, task_binds, task_env

PROBE = """
import json, os, components.home as h
print(json.dumps({
    "env": sorted(os.environ),
    "home": os.environ.get("HOME"),
    "repo_root": str(h.REPO_ROOT),
    "state_home": str(h.home()),
    "checkout_visible": os.path.exists(REPO + "/README.md") or os.path.exists(REPO + "/.leukoflow"),
    "claim": sorted(os.listdir("/models")),
}))
"""


def test_a_task_sees_its_declarations_and_nothing_of_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///this-machine.db")  # LEUKOFLOW_HOME is set by conftest
    claim = tmp_path / "claim"
    claim.mkdir()
    (claim / "v1").mkdir()
    cluster = Cluster(pvcs={"store": claim}, config_maps={"cm": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}})
    platform = {
        "pvcMount": [{"constant": "store", "mountPath": "/models"}],
        "configMapAsEnv": [
            {
                "configMapName": "cm",
                "keyToEnv": [{"configMapKey": "MLFLOW_TRACKING_URI", "envVar": "MLFLOW_TRACKING_URI"}],
            }
        ],
    }
    env = task_env({"LEUKOFLOW_MODEL_BASE": "/models"}, platform, cluster)
    command, root = Sandbox(copy_image_source(tmp_path / "image"), task_binds(platform, cluster)).command(
        env, ["python3", "-c", f"REPO = {str(REPO)!r}\n" + PROBE]
    )
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"
    assert set(seen["env"]) - {"LC_CTYPE"} == set(env), "only the image's ENV and the task's declarations"
    assert seen["state_home"] == image_env()["LEUKOFLOW_HOME"] and seen["home"] == "/tmp/home"
    assert not seen["checkout_visible"] and seen["repo_root"] != str(REPO)
    assert seen["claim"] == ["v1"]


def test_an_undeclared_cluster_object_stops_the_task():
    cluster = Cluster(pvcs={})
    with pytest.raises(SpecError, match="PersistentVolumeClaim 'data' does not exist"):
        task_binds({"pvcMount": [{"constant": "data", "mountPath": "/data"}]}, cluster)
    missing_key = {"configMapAsEnv": [{"configMapName": "cm", "keyToEnv": [{"configMapKey": "X", "envVar": "X"}]}]}
    with pytest.raises(SpecError, match="configMapName 'cm' does not exist"):
        task_env({}, missing_key, cluster)
    with pytest.raises(SpecError, match="has no key 'X'"):
        task_env({}, missing_key, Cluster(pvcs={}, config_maps={"cm": {}}))
