"""The import directions of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass here,
and fail on a copy of the code with one forbidden import or one cycle injected."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "serving", "monitoring", "pipelines")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repo's contracts, on the packages under `root` (first on the path)."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


@pytest.fixture
def code_copy(tmp_path) -> Path:
    """The four packages' Python files, copied so an import can be injected without touching the repo."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    return tmp_path


def _inject(path: Path, line: str) -> None:
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text
    path.write_text(text.replace(marker, marker + line + "\n", 1))


@pytest.mark.parametrize(
    "module, line, expected",
    [
        # A component reaching up into serving: the layer contract names the import.
        ("components/settings.py", "import serving.client  # noqa", "components.settings -> serving.client"),
        # Hidden inside a function is still an import.
        (
            "components/promote/gate/policy.py",
            "def _f():\n    from pipelines import local  # noqa",
            "components.promote.gate.policy -> pipelines.local",
        ),
        # serving -> monitoring: the request-log writer is injected, never imported.
        ("serving/cli.py", "from monitoring import drift  # noqa", "serving.cli -> monitoring.drift"),
        # A cycle: the metrics module importing the executor that imports it.
        ("components/evaluate/metrics.py", "from components.evaluate import executor  # noqa", ".metrics -> .executor"),
    ],
)
def test_a_wrong_import_breaks_a_contract(code_copy, module, line, expected):
    assert lint_imports(code_copy).returncode == 0  # the copy itself is clean
    _inject(code_copy / module, line)
    proc = lint_imports(code_copy)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout
    assert expected in proc.stdout, proc.stdout[-4000:]
