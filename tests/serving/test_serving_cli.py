"""`leukoflow serve`: TF Serving's flag names, and a real process serving a model until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from fixtures.model_base import MONITORING_CONFIG, install_version
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(180)

FLAGS = (
    "--port",
    "--rest_api_port",
    "--model_name",
    "--model_base_path",
    "--model_config_file",
    "--model_config_file_poll_wait_seconds",
    "--file_system_poll_wait_seconds",
    "--enable_batching",
    "--batching_parameters_file",
    "--monitoring_config_file",
    "--ssl_config_file",
    "--rest_api_num_threads",
    "--grpc_max_threads",
    "--host",
    "--request_log_dir",
    "--tensorflow_intra_op_parallelism",
    "--tensorflow_inter_op_parallelism",
)


def test_help_lists_tf_serving_flags():
    from serving.cli import serve_app

    result = CliRunner().invoke(serve_app, ["--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in FLAGS:
        assert flag in result.output, flag


def test_missing_config_file_is_a_clear_error(tmp_path):
    from serving.cli import serve_app

    result = CliRunner().invoke(serve_app, ["--model_config_file", str(tmp_path / "nope.config"), "--json"])
    assert result.exit_code != 0
    assert "--model_config_file: no such file" in result.output


@pytest.mark.slow
def test_serve_process_end_to_end(exported_versions, tmp_path):
    base = tmp_path / "models" / "leukemia"
    install_version(exported_versions, base, 1)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(MONITORING_CONFIG)
    leukoflow = Path(sys.executable).parent / "leukoflow"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LEUKOFLOW_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [
            str(leukoflow),
            "serve",
            "--port=0",
            "--rest_api_port=0",
            "--model_name=leukemia",
            f"--model_base_path={base}",
            f"--monitoring_config_file={monitoring}",
            "--enable_batching",
            "--tensorflow_intra_op_parallelism=1",
            "--tensorflow_inter_op_parallelism=1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["status"] == "serving" and info["models"] == {"leukemia": [1]}
        assert info["tensorflow_threads"] == {"intra_op": 1, "inter_op": 1}  # read back from TensorFlow
        rest = f"http://127.0.0.1:{info['rest_port']}"
        assert (
            requests.get(f"{rest}/v1/models/leukemia", timeout=30).json()["model_version_status"][0]["state"]
            == "AVAILABLE"
        )
        assert (
            "leukoflow_serving_loaded_versions"
            in requests.get(f"{rest}/monitoring/prometheus/metrics", timeout=30).text
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_port_in_use_is_a_clear_error_and_the_process_exits(exported_versions, tmp_path):
    import socket

    base = tmp_path / "models" / "leukemia"
    install_version(exported_versions, base, 1)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    leukoflow = Path(sys.executable).parent / "leukoflow"
    env = {**os.environ, "LEUKOFLOW_HOME": str(tmp_path / "home")}
    try:
        done = subprocess.run(
            [
                str(leukoflow),
                "serve",
                "--port=0",
                f"--rest_api_port={port}",
                "--model_name=leukemia",
                f"--model_base_path={base}",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        busy.close()
    assert done.returncode != 0
    assert "cannot start the server" in json.loads(done.stdout.strip().splitlines()[-1])["error"]


@pytest.mark.slow
def test_tensorflow_threads_after_start_up_is_a_clear_error():
    """Thread pools are fixed once TensorFlow runs: asking later names the flag instead of failing obscurely."""
    code = (
        "import tensorflow as tf\n"
        "tf.constant(1) + 1\n"
        "from serving.server import apply_tensorflow_threads\n"
        "assert apply_tensorflow_threads(0, 0)  # nothing asked: fine\n"
        "try:\n"
        "    apply_tensorflow_threads(3, 0)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--tensorflow_intra_op_parallelism=3: TensorFlow already started" in done.stdout
