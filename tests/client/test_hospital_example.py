"""examples/hospital_client.py works with the official stubs alone (no leukoflow import)."""

from __future__ import annotations

import ast
import importlib.util
import json

import numpy as np
from PIL import Image

from client.test_client import FlakyServer
from components.home import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "hospital_client.py"


def _load():
    spec = importlib.util.spec_from_file_location("hospital_client", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_only_grpc_and_the_official_api():
    tree = ast.parse(EXAMPLE.read_text())
    roots = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    roots |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert roots <= {"__future__", "argparse", "json", "sys", "time", "grpc", "tensorflow", "tensorflow_serving"}, roots


def test_predicts_through_a_grpc_server(tmp_path, capsys):
    image = tmp_path / "smear.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with FlakyServer(fail_first=1) as server:
        code = _load().main([str(image), "--server", server.target, "--label", "stable", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["version"] == 3
    assert payload["predictions"][0]["label"] == "Pre"
    assert server.received[-1].model_spec.version_label == "stable"
    assert list(server.received[-1].inputs["images"].string_val) == [image.read_bytes()]
