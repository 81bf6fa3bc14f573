"""An IR runner: executes a compiled pipeline package's tasks as a cluster would, with only what the spec gives.

kfp.local walks the DAG (ParallelFor, conditions, Collected outputs, caching) and builds each task's executor
input, as KFP's driver does; each task then runs here in its own process, in its own sandbox:

- a fresh root filesystem (tmpfs) holding only the "image": the system folders, this Python and its
  site-packages, and a copy of the project's packages (as `pip install .` puts them in the component image);
  nothing else of this machine (no repository checkout, no `.leukoflow/`, no `data/`);
- an environment built only from the image's ENV (read from infra/docker/component.Dockerfile), the task's
  container env and its kfp-kubernetes declarations (ConfigMap and Secret keys resolved against `Cluster`),
  with a fresh HOME; nothing of this process's environment is inherited;
- each PVC the task declares bound at its mount path to that claim's folder; undeclared claims are not there;
- the artifact store (kfp.local's pipeline root) at the same path, as KFP's launcher stages artifacts.

The sandbox is a user and mount namespace (`unshare`) and `chroot`; the network is shared (loopback servers).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "docker" / "component.Dockerfile"
IMAGE_PACKAGES = ("components", "pipelines", "monitoring", "serving")
IMAGE_SOURCE = "/opt/leukoflow-src"  # where the project's packages sit in the sandbox (site-packages in the image)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc")


@dataclass
class Cluster:
    """What the cluster holds: each claim's folder, and the ConfigMaps and Secrets tasks read env from."""

    pvcs: dict[str, Path]
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)


class SpecError(RuntimeError):
    """A task's declarations cannot be met by the cluster (a missing claim, ConfigMap or key)."""


def image_env(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (what every container of the image starts with)."""
    lines, joined = dockerfile.read_text().splitlines(), []
    buffer = ""
    for line in lines:
        if line.strip().startswith("#"):
            continue
        buffer += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            joined.append(buffer.strip())
            buffer = ""
    final = max(i for i, line in enumerate(joined) if line.upper().startswith("FROM "))
    env: dict[str, str] = {}
    for line in joined[final:]:
        if line.upper().startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _python_dirs() -> list[str]:
    """This interpreter's installation and its virtualenv (the image's Python and site-packages)."""
    dirs = {str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve())}
    return sorted(dirs)


@dataclass
class Sandbox:
    """Builds the command line that runs `argv` in a fresh root with `binds` (host folder -> path inside)."""

    image_source: Path
    binds: dict[str, Path] = field(default_factory=dict)
    cwd: str = "/var/lib/leukoflow"

    def command(self, env: dict[str, str], argv: list[str]) -> tuple[list[str], Path]:
        root = Path(tempfile.mkdtemp(prefix="leukoflow-task-root-"))
        q = shlex.quote
        script = ["set -e", f"R={q(str(root))}", 'mount -t tmpfs -o mode=755 task-root "$R"']

        def bind(host: str, inside: str, read_only: bool) -> None:
            script.append(f'mkdir -p "$R"{q(inside)} && mount --rbind {q(host)} "$R"{q(inside)}')
            if read_only:
                script.append(f'mount -o remount,bind,ro "$R"{q(inside)}')

        for path in SYSTEM_DIRS:
            if os.path.islink(path):  # merged /usr: /bin -> usr/bin
                script.append(f'ln -s {q(os.readlink(path))} "$R"{q(path)}')
            elif os.path.isdir(path):
                bind(path, path, True)
        for path in _python_dirs():
            bind(path, path, True)
        bind(str(self.image_source), IMAGE_SOURCE, True)
        bind("/dev", "/dev", False)
        bind("/proc", "/proc", False)
        bind("/sys", "/sys", True)
        for inside, host in sorted(self.binds.items()):
            bind(str(host), inside, False)
        script += [
            'mkdir -p "$R"/tmp "$R"/tmp/home "$R"' + q(self.cwd),
            'chmod 1777 "$R"/tmp',
            f'exec chroot "$R" /usr/bin/env -i -C {q(self.cwd)} "$@"',
        ]
        assignments = [f"{k}={v}" for k, v in sorted(env.items())]
        command = ["unshare", "--user", "--map-root-user", "--mount", "--fork", "/bin/sh", "-c", "\n".join(script)]
        return command + ["sandbox", *assignments, *argv], root


def copy_image_source(dest: Path) -> Path:
    """The project's packages as the image installs them: code only, no checkout around them."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in IMAGE_PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def base_env() -> dict[str, str]:
    """The image's ENV, with its Python at this interpreter's virtualenv and the project on PYTHONPATH."""
    env = image_env()
    venv = str(Path(sys.prefix).resolve())
    env["PATH"] = f"{venv}/bin:/usr/local/bin:/usr/bin:/bin"
    env["PYTHONPATH"] = IMAGE_SOURCE
    env["HOME"] = "/tmp/home"  # fresh in every container
    return env


@dataclass
class TaskRun:
    executor: str
    returncode: int
    log: str


@dataclass
class RunResult:
    succeeded: bool
    tasks: list[TaskRun]
    error: str | None = None
    run_dir: Path | None = None  # this run's folder in the artifact store: <task>/<output artifact>

    def failed(self) -> list[TaskRun]:
        return [t for t in self.tasks if t.returncode != 0]

    def explain(self) -> str:
        lines = [f"run {'succeeded' if self.succeeded else 'FAILED'}: {self.error or ''}"]
        for task in self.failed():
            lines.append(f"--- {task.executor} exited {task.returncode}; its output ends:\n{task.log[-3000:]}")
        return "\n".join(lines)


def task_env(container_env: dict[str, str], platform: dict, cluster: Cluster) -> dict[str, str]:
    """The container's environment: image ENV, then the task's env, then its ConfigMap and Secret keys."""
    env = {**base_env(), **container_env}
    for source, kind, store in (
        ("configMapAsEnv", "configMapName", cluster.config_maps),
        ("secretAsEnv", "secretName", cluster.secrets),
    ):
        for ref in platform.get(source, []):
            name = ref[kind]
            data = store.get(name)
            if data is None:
                if ref.get("optional"):
                    continue
                raise SpecError(f"{kind} {name!r} does not exist in the cluster")
            for pair in ref.get("keyToEnv", []):
                key = pair.get("configMapKey") or pair.get("secretKey")
                if key not in data:
                    raise SpecError(f"{kind} {name!r} has no key {key!r}")
                env[pair["envVar"]] = data[key]
    return env


def task_binds(platform: dict, cluster: Cluster) -> dict[str, Path]:
    """Each declared PVC at its mount path (its claim's folder); a claim the cluster lacks is an error."""
    binds = {}
    for mount in platform.get("pvcMount", []):
        claim = mount.get("constant") or mount["pvcNameParameter"]["runtimeValue"]["constant"]
        if claim not in cluster.pvcs:
            raise SpecError(f"PersistentVolumeClaim {claim!r} does not exist in the cluster")
        folder = cluster.pvcs[claim] / mount.get("subPath", "") if mount.get("subPath") else cluster.pvcs[claim]
        binds[mount["mountPath"]] = folder
    return binds


def read_package(package: Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec's executors) of a compiled package."""
    documents = list(yaml.safe_load_all(package.read_text()))
    spec = documents[0]
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(documents) > 1 else {}
    return spec, platform


@contextlib.contextmanager
def _sandboxed_tasks(platform: dict, cluster: Cluster, image_source: Path, artifacts: Path, runs: list[TaskRun]):
    """Route kfp.local's subprocess tasks into sandboxes built from each task's own declarations."""
    from kfp.local import status, subprocess_task_handler, task_dispatcher

    current = threading.local()
    original_dispatch = task_dispatcher.run_single_task_implementation
    original_handler = subprocess_task_handler.SubprocessTaskHandler

    def dispatch(*args, **kwargs):
        current.executor = kwargs["component_spec"].executor_label
        return original_dispatch(*args, **kwargs)

    class SandboxTaskHandler:
        def __init__(self, image, full_command, pipeline_root, runner, env_vars=None):
            self.full_command, self.env_vars = list(full_command), dict(env_vars or {})

        def run(self):
            executor = current.executor
            declared = platform.get(executor, {})
            try:
                env = task_env(self.env_vars, declared, cluster)
                binds = {str(artifacts): artifacts, **task_binds(declared, cluster)}
            except SpecError as exc:
                runs.append(TaskRun(executor, 1, f"cannot start the container: {exc}"))
                return status.Status.FAILURE
            command, root = Sandbox(image_source, {k: Path(v) for k, v in binds.items()}).command(
                env, self.full_command
            )
            try:
                proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            runs.append(TaskRun(executor, proc.returncode, proc.stdout))
            return status.Status.SUCCESS if proc.returncode == 0 else status.Status.FAILURE

    task_dispatcher.run_single_task_implementation = dispatch
    subprocess_task_handler.SubprocessTaskHandler = SandboxTaskHandler
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original_dispatch
        subprocess_task_handler.SubprocessTaskHandler = original_handler


def _init_local(work: Path) -> tuple[Path, Path]:
    """kfp.local with the artifact store and cache under `work`; returns (artifact store, image source)."""
    from kfp import local

    artifacts = (work / "artifact-store").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    image_source = work / "image"
    if not image_source.is_dir():
        copy_image_source(image_source)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(artifacts),
        raise_on_error=True,
        enable_caching=True,  # KFP's default; tasks that opt out (validate, promote) always run
        cache_root=str(work / "cache"),
    )
    return artifacts, image_source


def _parse_spec(spec: dict):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    return json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())


def run_package(package: Path, arguments: dict, cluster: Cluster, work: Path) -> RunResult:
    """Run every task of the compiled `package` with `arguments`; `work` holds the artifact store and the cache."""
    from kfp.local import pipeline_orchestrator

    spec, platform = read_package(package)
    artifacts, image_source = _init_local(work)
    before = set(artifacts.iterdir())
    runs: list[TaskRun] = []
    with _sandboxed_tasks(platform, cluster, image_source, artifacts, runs):
        try:
            pipeline_orchestrator.run_local_pipeline(pipeline_spec=_parse_spec(spec), arguments=arguments)
            error = None
        except Exception as exc:  # the orchestrator raises when a task fails; the tasks' logs say why
            error = f"{type(exc).__name__}: {exc}"
    created = sorted(set(artifacts.iterdir()) - before)
    return RunResult(error is None, runs, error, created[-1] if created else None)


def run_task(package: Path, task: str, arguments: dict, cluster: Cluster, work: Path) -> RunResult:
    """Run one task of the compiled `package` (as KFP retries a task), its inputs given as `arguments`."""
    from kfp import local
    from kfp.local import executor_input_utils, placeholder_utils, status, task_dispatcher, utils

    spec, platform = read_package(package)
    pipeline_spec = _parse_spec(spec)
    dags = [pipeline_spec.root.dag] + [c.dag for c in pipeline_spec.components.values() if c.HasField("dag")]
    task_spec = next(d.tasks[task] for d in dags if task in d.tasks)
    component_spec = pipeline_spec.components[task_spec.component_ref.name]
    executor_spec = utils.struct_to_executor_spec(
        pipeline_spec.deployment_spec["executors"][component_spec.executor_label]
    )
    artifacts, image_source = _init_local(work)
    runs: list[TaskRun] = []
    with _sandboxed_tasks(platform, cluster, image_source, artifacts, runs):
        _, outcome = task_dispatcher.run_single_task_implementation(
            pipeline_resource_name=executor_input_utils.get_local_pipeline_resource_name(
                pipeline_spec.pipeline_info.name
            ),
            component_name=task_spec.component_ref.name,
            component_spec=component_spec,
            executor_spec=executor_spec,
            arguments=arguments,
            pipeline_root=str(artifacts),
            runner=local.SubprocessRunner(use_venv=False),
            raise_on_error=False,
            block_input_artifact=False,
            unique_pipeline_id=placeholder_utils.make_random_id(),
        )
    succeeded = outcome == status.Status.SUCCESS
    return RunResult(succeeded, runs, None if succeeded else f"task {task} failed")


def start_in_sandbox(argv: list[str], binds: dict[str, Path], work: Path, env: dict[str, str] | None = None):
    """Start a long-running process (a server) in a sandbox with `binds`; returns (Popen, its root folder)."""
    image_source = work / "image"
    if not image_source.is_dir():
        copy_image_source(image_source)
    command, root = Sandbox(image_source, binds).command({**base_env(), **(env or {})}, argv)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, root
