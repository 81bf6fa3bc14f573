"""The README's runnable shell blocks run (those marked `<!-- runnable -->`; they need no cluster)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"<!-- runnable -->\s*\n```(?:bash|sh)\n(.*?)```", re.S)


def runnable_blocks(text: str) -> list[str]:
    return [block.strip() for block in _BLOCK.findall(text)]


def test_the_readme_marks_runnable_blocks():
    blocks = runnable_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 3, "the README should mark its cluster-free commands as runnable"


@pytest.mark.parametrize("block", runnable_blocks((REPO / "README.md").read_text()))
def test_readme_block_runs(block, tmp_path):
    venv_bin = REPO / ".venv" / "bin"
    env = dict(os.environ, LEUKOFLOW_HOME=str(tmp_path / "home"), PATH=f"{venv_bin}:{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"README block failed:\n{block}\n--- stderr ---\n{proc.stderr[-3000:]}"
