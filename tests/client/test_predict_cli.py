"""`leukoflow predict`: human and --json output through a real gRPC server, and the unreachable-server error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from client.test_client import PROBS, FlakyServer
from components import domain
from serving.predict import app


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    jpg, tif = tmp_path / "smear.jpg", tmp_path / "camera.tif"
    Image.fromarray(rgb).save(jpg)
    Image.fromarray(rgb).save(tif)
    return [jpg, tif]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_json_output(images):
    with FlakyServer(fail_first=1) as server:
        result = CliRunner().invoke(app, [*map(str, images), "--server", server.target, "--label", "canary", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # exactly one JSON object
    assert payload["server"] == server.target and payload["label"] == "canary"
    assert [p["image"] for p in payload["predictions"]] == [str(p) for p in images]
    for p in payload["predictions"]:
        assert p["label"] == "Pre" and p["model_version"] == 3
        assert list(p["confidences"]) == list(domain.CLASS_NAMES)
        assert p["confidences"]["Pre"] == pytest.approx(0.6)
    sent = list(server.received[-1].inputs["images"].string_val)
    assert sent[0] == images[0].read_bytes() and sent[1].startswith(b"\x89PNG")


def test_human_output(images):
    with FlakyServer() as server:
        result = CliRunner().invoke(app, [str(images[0]), "--server", server.target, "--version", "3"])
    assert result.exit_code == 0, result.output
    assert f"{images[0]}: Pre (0.600)" in result.stdout
    for name, p in zip(domain.CLASS_NAMES, PROBS):
        assert f"{name} {p:.3f}" in result.stdout
    assert server.received[0].model_spec.version.value == 3


def test_bad_inputs_are_named(tmp_path, images):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    result = CliRunner().invoke(app, [str(text), "--json"])
    assert result.exit_code == 1 and "notes.txt" in json.loads(result.stdout)["error"]
    result = CliRunner().invoke(app, [str(tmp_path / "missing.png")])
    assert result.exit_code == 1 and "image not found" in result.stderr
    result = CliRunner().invoke(app, [str(images[0]), "--label", "stable", "--version", "1"])
    assert result.exit_code == 1 and "not both" in result.stderr


@pytest.mark.slow
def test_unreachable_server_through_the_real_entry_point(images):
    target = f"127.0.0.1:{_free_port()}"
    leukoflow = Path(sys.executable).parent / "leukoflow"
    out = subprocess.run(
        [str(leukoflow), "predict", str(images[0]), "--server", target, "--deadline", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 2, out.stderr
    assert f"cannot reach TensorFlow Serving at {target}" in out.stderr
    assert "Traceback" not in out.stderr
    payload = json.loads(out.stdout)
    assert payload["server"] == target and "Is the server running" in payload["error"]
