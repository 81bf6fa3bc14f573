"""What the benchmarks, checks and experiments share: where their results go, the host facts recorded beside
each figure, and the one way they start and stop `leukoflow serve` on loopback."""

from __future__ import annotations

import json
import os
import platform
import selectors
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCHING_CONFIG = REPO / "serving" / "batching.config"
MONITORING_CONFIG = REPO / "serving" / "monitoring.config"


def results_dir(script: str | Path) -> Path:
    """The results folder beside `script` (a module's `__file__`): benchmarks/, checks/ or experiments/results."""
    return Path(script).resolve().parent / "results"


def host_facts() -> dict:
    """The machine a figure was measured on: architecture, processor, usable cores, Python, 1-minute load."""
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def shown_path(path: str | Path) -> str:
    """A path for written results: relative to the repository or `$LEUKOFLOW_HOME`, never a machine path."""
    from components import home

    text = home.display(path)
    return os.path.relpath(Path(path).resolve(), REPO) if os.path.isabs(text) else text


def command_line(module: str, argv: Sequence[str]) -> str:
    """`python -m module argv...` as a results file records it, absolute paths (also in NAME=PATH) shown portably."""

    def shown(arg: str) -> str:
        name, sep, value = arg.partition("=")
        if sep and value.startswith("/") and not name.startswith("-"):
            return f"{name}={shown_path(value)}"
        return shown_path(arg) if arg.startswith("/") else arg

    return " ".join(["python -m", module, *map(shown, argv)])


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if this process dies without reaching its `finally`."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; the caller's finally is the main guarantee
        pass


def server_log_tail(log_path: Path, lines: int = 20) -> str:
    """The last lines of a server's stderr, with machine paths shown relative to the state home."""
    from components import home

    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    return home.display_text("\n".join(text.splitlines()[-lines:]))


def start_server(
    model_config: Path,
    log_path: Path,
    *,
    request_log: Path | None = None,
    batching: bool = False,
    batching_config: Path = BATCHING_CONFIG,
    intra_op_threads: int | None = None,
    extra_flags: Sequence[str] = (),
    startup_s: float = 300.0,
) -> tuple[subprocess.Popen, int, int]:
    """`leukoflow serve` in its own process on 127.0.0.1, ports the OS picks; returns (process, gRPC, REST port)
    once it reports serving, within `startup_s`.

    The request log is on (the server's default) when `request_log` is a folder, off otherwise. With `batching`,
    server-side batching with `batching_config` and, when given, that many TensorFlow intra-op threads.
    Stderr goes to `log_path`; the server dies with this process.
    """
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--rest_api_port",
        "0",
        "--model_config_file",
        str(model_config),
        "--monitoring_config_file",
        str(MONITORING_CONFIG),
        "--request_log_dir",
        str(request_log) if request_log else "none",
        "--json",
        *extra_flags,
    ]
    if batching:
        cmd += ["--enable_batching", "--batching_parameters_file", str(batching_config)]
        if intra_op_threads is not None:
            cmd += ["--tensorflow_intra_op_parallelism", str(intra_op_threads)]
    proc, info = launch(cmd, log_path, startup_s, "the server")
    return proc, int(info["grpc_port"]), int(info["rest_port"])


def launch(cmd: list[str], log_path: Path, startup_s: float, what: str) -> tuple[subprocess.Popen, dict]:
    """Start a project CLI that prints one JSON line once it listens (`--json`); returns (process, that object).

    Stderr goes to `log_path`; the process dies with this one, and is stopped if it does not report in time.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log_path.open("w"),
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        preexec_fn=_die_with_parent,
    )
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=max(startup_s, 0))
    line = proc.stdout.readline() if ready else ""
    if not line:
        stop_server(proc)
        raise RuntimeError(
            f"{what} did not report listening within {startup_s:.0f} s (exit {proc.returncode});\n"
            + server_log_tail(log_path)
        )
    return proc, json.loads(line)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s; a process that already exited is left as it is."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
