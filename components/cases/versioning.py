"""Version the cases folder with DVC: `dvc add` then `dvc push`, and remember what was committed.

The cases folder must sit inside a DVC repository (a folder above it holds `.dvc/`), like `data/` does.
`dvc add` writes `<cases>.dvc` beside the folder; its md5 is the cases hash a training run records.
A small record beside it, `<cases>.commit.json`, lists the cases that hash holds, so `cases list`
can say which cases are not committed yet without asking DVC to rehash the folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from components import atomic_files
from components.cases import store

DVC_TIMEOUT_S = 600


class NotVersioned(RuntimeError):
    """The cases folder is not inside a DVC repository, or a dvc command failed."""


def dvc_binary() -> str:
    """The dvc beside this Python (the project's environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if not found:
        raise NotVersioned("dvc is not installed in this environment (pip install dvc)")
    return found


def dvc_root(cases_dir: Path) -> Path:
    """The nearest folder at or above the cases folder's parent that holds `.dvc/`."""
    start = Path(cases_dir).resolve().parent
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise NotVersioned(
        f"{cases_dir} is not inside a DVC repository: run `dvc init` (and `dvc remote add -d ...`) in a folder "
        "above it, or give --cases-dir inside the project's repository"
    )


def dvc_file(cases_dir: Path) -> Path:
    return Path(cases_dir).resolve().with_name(Path(cases_dir).name + ".dvc")


def commit_record_path(cases_dir: Path) -> Path:
    return Path(cases_dir).resolve().with_name(Path(cases_dir).name + ".commit.json")


def committed_hash(cases_dir: Path) -> str | None:
    """The md5 DVC recorded for the cases folder at its last `dvc add`, or None if never added."""
    path = dvc_file(cases_dir)
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    return str(outs[0].get("md5")) if outs and outs[0].get("md5") else None


def read_commit_record(cases_dir: Path) -> dict:
    import json

    path = commit_record_path(cases_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def _dvc(args: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(
            [dvc_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=DVC_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise NotVersioned(f"`dvc {' '.join(args)}` took longer than {DVC_TIMEOUT_S} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise NotVersioned(f"`dvc {' '.join(args)}` failed: {' '.join(detail[-3:]) or f'exit {done.returncode}'}")
    return done.stdout


def commit(cases_dir: Path, remote: str | None = None, now: datetime | None = None) -> dict:
    """`dvc add` the cases folder and `dvc push` it; returns the new hash and what it holds."""
    cases_dir = Path(cases_dir).resolve()
    ledger = store.read_ledger(cases_dir)
    if len(ledger) == 0:
        raise NotVersioned(f"no cases in {cases_dir} yet: add some with `leukoflow cases add` first")
    root = dvc_root(cases_dir)
    with store.locked(cases_dir):  # no add lands half-way through the hashing
        previous = committed_hash(cases_dir)
        rel = str(cases_dir.relative_to(root))
        _dvc(["add", rel], root)
        _dvc(["push", rel + ".dvc", *(["--remote", remote] if remote else [])], root)
        digest = committed_hash(cases_dir)
        record = {
            "hash": digest,
            "previous_hash": previous,
            "committed_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "cases": int((ledger["status"] == "ok").sum()),
            "sha256": sorted(ledger["sha256"]),
            "dvc_file": str(dvc_file(cases_dir)),
            "remote": remote,
        }
        atomic_files.write_json(commit_record_path(cases_dir), record)
    return {**{k: v for k, v in record.items() if k != "sha256"}, "changed": digest != previous}


def listing(cases_dir: Path) -> dict:
    """Counts per site and label, the committed hash, and the cases added since that commit."""
    cases_dir = Path(cases_dir)
    info = store.summary(cases_dir)
    record = read_commit_record(cases_dir)
    committed = set(record.get("sha256") or [])
    uncommitted = [sha for sha in info.pop("sha256") if sha not in committed]
    digest = committed_hash(cases_dir)
    return {
        **info,
        "committed_hash": digest,
        "committed_at": record.get("committed_at") if record.get("hash") == digest else None,
        "uncommitted": len(uncommitted),
        "uncommitted_sha256": uncommitted,
    }
