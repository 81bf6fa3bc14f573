"""The package each cluster path submits, produced the way that path produces it (shared by the cluster tests)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pipelines.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def compile_package(cluster_env: Path, output: Path) -> Path:
    """`leukoflow pipeline compile --cluster-config FILE --output OUT`."""
    proc = subprocess.run(
        [*CLI, "pipeline", "compile", "--cluster-config", str(cluster_env), "--output", str(output), "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["output"] == str(output)
    return output


def drift_cronjob() -> dict:
    """The drift CronJob's pod spec as `kubectl kustomize infra/k8s/monitoring` renders it."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "infra/k8s/monitoring")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    (cron,) = [r for r in yaml.safe_load_all(out.stdout) if r and r["kind"] == "CronJob"]
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def cronjob_compile(cluster_env: Path, workdir: Path) -> Path:
    """Run the CronJob's init container command here, its mounts mapped to local files; returns the package.

    The cluster config file is where the CronJob's ConfigMap volume puts it; /work is its emptyDir.
    """
    pod = drift_cronjob()
    (init,) = pod["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(n for n in mounts if "configMap" in volumes[n])
    (item,) = volumes[config_volume]["configMap"]["items"]
    config_path = f"{mounts[config_volume]}/{item['path']}"
    workdir.mkdir(parents=True, exist_ok=True)
    mapping = {config_path: str(cluster_env), mounts["work"]: str(workdir)}
    command = []
    for arg in init["command"]:
        for inside, here in mapping.items():
            if arg == inside or arg.startswith(inside + "/"):
                arg = here + arg[len(inside) :]
                break
        command.append(arg)
    assert command[0] == "leukoflow", shlex.join(command)
    proc = subprocess.run([*CLI, *command[1:]], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(json.loads(proc.stdout)["output"])


def drift_trigger_package(cluster_env: Path, workdir: Path) -> Path:
    """Where the CronJob's drift check finds the package its trigger submits (`--pipeline-package`)."""
    pod = drift_cronjob()
    (check,) = pod["containers"]
    command = check["command"]
    inside = command[command.index("--pipeline-package") + 1]
    package = cronjob_compile(cluster_env, workdir)
    work_mount = next(m["mountPath"] for m in check["volumeMounts"] if m["name"] == "work")
    assert inside == f"{work_mount}/{package.relative_to(workdir)}", (inside, package)
    return package
