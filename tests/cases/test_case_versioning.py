"""`cases commit` against a real DVC repository with a local remote; `cases list` before and after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from components.cases import store
from tests.cases.conftest import DVC_ENV as ENV
from tests.cases.conftest import render_jpeg


def _run(args: list[str], cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, env=ENV, check=True, capture_output=True, text=True, timeout=120).stdout


def _cases(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "cases", *args], env=ENV, capture_output=True, text=True, timeout=300
    )


def _add(cases: Path, base, label: str, seed: int, tmp_path: Path) -> None:
    image = tmp_path / f"{label}{seed}.jpg"
    image.write_bytes(render_jpeg(label, seed))
    assert store.add_cases([store.Candidate(image, label, "lab-b")], cases, base)["counts"]["added"] == 1


def _remote_files(remote: Path) -> set[Path]:
    return {p for p in remote.rglob("*") if p.is_file()}


def test_commit_pushes_a_new_version_and_list_tracks_it(dvc_repo, base_data, tmp_path):
    repo, remote = dvc_repo
    cases = repo / "cases"
    base = store.base_index(base_data)
    _add(cases, base, "Benign", 21, tmp_path)
    _add(cases, base, "Pre", 22, tmp_path)

    before = json.loads(_cases("list", "--cases-dir", str(cases), "--json").stdout)
    assert before["committed_hash"] is None and before["uncommitted"] == 2
    assert before["per_site"] == {"lab-b": {"Benign": 1, "Early": 0, "Pre": 1, "Pro": 0}}

    done = _cases("commit", "--cases-dir", str(cases), "--json")
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    assert first["changed"] and first["hash"].endswith(".dir") and first["cases"] == 2
    assert (repo / "cases.dvc").is_file()
    pushed = _remote_files(remote)
    assert len(pushed) >= 4  # the two images, the ledger and the directory listing reached the remote
    # DVC itself agrees the remote holds this version.
    assert "in sync" in _run([str(Path(sys.executable).parent / "dvc"), "status", "-c", "cases.dvc"], repo).lower()

    after = json.loads(_cases("list", "--cases-dir", str(cases), "--json").stdout)
    assert after["committed_hash"] == first["hash"] and after["uncommitted"] == 0

    _add(cases, base, "Pro", 23, tmp_path)
    pending = json.loads(_cases("list", "--cases-dir", str(cases), "--json").stdout)
    assert pending["uncommitted"] == 1 and pending["committed_hash"] == first["hash"]
    second = json.loads(_cases("commit", "--cases-dir", str(cases), "--json").stdout)
    assert second["changed"] and second["hash"] != first["hash"] and second["previous_hash"] == first["hash"]
    assert len(_remote_files(remote)) > len(pushed)
    again = json.loads(_cases("commit", "--cases-dir", str(cases), "--json").stdout)
    assert not again["changed"] and again["hash"] == second["hash"]


def test_commit_outside_a_dvc_repository_says_so(tmp_path, base_data):
    cases = tmp_path / "plain" / "cases"
    _add(cases, store.base_index(base_data), "Early", 24, tmp_path)
    done = _cases("commit", "--cases-dir", str(cases), "--json")
    assert done.returncode == 1 and "not inside a DVC repository" in json.loads(done.stdout)["error"]


def test_commit_with_no_cases_says_so(dvc_repo):
    repo, _ = dvc_repo
    done = _cases("commit", "--cases-dir", str(repo / "cases"))
    assert done.returncode == 1 and "no cases" in done.stderr
