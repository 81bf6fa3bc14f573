"""The Dockerfiles under infra/ lint clean and install what they must."""

from __future__ import annotations

import subprocess

import pytest

from infra.helpers import REPO, tool

DOCKERFILES = sorted((REPO / "infra").rglob("*Dockerfile*"))


def test_dockerfiles_exist():
    names = {p.name for p in DOCKERFILES}
    assert {"component.Dockerfile", "serving.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    out = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint {dockerfile.name}:\n{out.stdout}{out.stderr}"


def test_component_image_installs_the_locked_set_without_data():
    text = (REPO / "infra/docker/component.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install --no-cache-dir -c requirements.lock ." in text
    assert "LEUKOFLOW_HOME=" in text
    assert "USER 10001" in text
    copied = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    assert not any(src.startswith(("data", ".leukoflow", ".venv")) for src in copied), copied


def test_serving_image_is_pinned_and_carries_the_configs():
    text = (REPO / "infra/docker/serving.Dockerfile").read_text()
    assert "FROM tensorflow/serving:2." in text and ":latest" not in text
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert f"serving/{name}" in text and f"/config/{name}" in text


def test_dockerignore_excludes_state_and_data():
    entries = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "data", ".leukoflow", ".git", "node_modules"} <= entries
