"""The pipeline compiles to KFP IR YAML with the expected tasks and wiring (no cluster needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml


def _compile(tmp_path, *args) -> dict:
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "compile", "--output", str(out), "--json", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["output"] == str(out)
    return next(yaml.safe_load_all(out.read_text()))


def _all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_compiled_yaml_has_every_step_wired(tmp_path):
    spec = _compile(tmp_path)
    tasks = _all_tasks(spec)
    for name in (
        "validate-op",
        "dedup-op",
        "preprocess-op",
        "split-op",
        "reference-op",
        "train-op",
        "evaluate-op",
        "compare-op",
        "gate-op",
        "promote-op",
    ):
        assert name in tasks, f"missing task {name}"
    deps = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert "validate-op" in deps["dedup-op"]
    assert {"dedup-op"} <= deps["preprocess-op"]
    assert {"dedup-op", "preprocess-op"} <= deps["split-op"]
    assert "train-op" in deps["evaluate-op"]

    # Training fans out over the model list with at most two at once.
    loops = [c for c in spec["root"]["dag"]["tasks"].values() if "iteratorPolicy" in c]
    assert loops and loops[0]["iteratorPolicy"]["parallelismLimit"] == 2
    assert spec["root"]["inputDefinitions"]["parameters"]["models"]["defaultValue"] == [
        "cnn",
        "resnet50",
        "mobilenetv2",
    ]

    # Promotion sits under the gate's condition.
    conditions = [t.get("triggerPolicy", {}).get("condition", "") for t in tasks.values()]
    assert any("promote" in c for c in conditions)


def test_training_task_requests_a_gpu_and_retries(tmp_path):
    spec = _compile(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    train = next(v for k, v in executors.items() if k.startswith("exec-train-op"))
    resources = train["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest")
    train_task = _all_tasks(spec)["train-op"]
    assert train_task["retryPolicy"]["maxRetryCount"] == 2


def test_every_component_uses_the_cluster_configs_image(tmp_path):
    from pipelines.cluster_config import DEFAULT_PATH, load

    spec = _compile(tmp_path)
    images = {v["container"]["image"] for v in spec["deploymentSpec"]["executors"].values()}
    assert images == {load(DEFAULT_PATH).image}
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"].get("command", [])), (
            "components must not pip install kfp"
        )
