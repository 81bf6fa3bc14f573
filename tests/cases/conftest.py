"""Small image sets for the case store: a base data folder and case folders built from other renders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.synthetic import _jpeg, _render, _write, make_synthetic_dataset


@pytest.fixture(scope="module")
def base_data(tmp_path_factory) -> Path:
    """A clean base data folder (class folders), the stand-in for data/."""
    root = tmp_path_factory.mktemp("base") / "data"
    make_synthetic_dataset(root, per_class=4, size=64, seed=3, defects=False)
    return root


def render_jpeg(label: str, seed: int, size: int = 64) -> bytes:
    """One synthetic smear of `label`, unlike any other seed's."""
    return _jpeg(_render(label, size, np.random.default_rng(1000 + seed)))


def case_folder(root: Path, images: dict[str, list[bytes]], extra: dict[str, bytes] | None = None) -> Path:
    """A FOLDER for `cases add`: class subfolders holding the given images (and extra files by relative name)."""
    for label, blobs in images.items():
        for k, blob in enumerate(blobs):
            _write(root / label / f"img{k}.jpg", blob)
    for rel, blob in (extra or {}).items():
        _write(root / rel, blob)
    return root


DVC_ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


@pytest.fixture
def dvc_repo(tmp_path) -> tuple[Path, Path]:
    """A git + DVC repository whose default remote is a local folder."""
    dvc = str(Path(sys.executable).parent / "dvc")
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    remote.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, env=DVC_ENV, check=True, capture_output=True, timeout=120)
    subprocess.run([dvc, "init", "-q"], cwd=repo, env=DVC_ENV, check=True, capture_output=True, timeout=120)
    subprocess.run(
        [dvc, "remote", "add", "-d", "local", str(remote)],
        cwd=repo,
        env=DVC_ENV,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return repo, remote
