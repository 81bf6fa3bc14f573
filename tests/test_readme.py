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


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the run log belongs in docs/experiments.md"


def test_the_readme_headline_equals_the_results_file():
    """The README's table is docs/results.md's promoted model, cell for cell (`make report` writes both)."""
    from pipelines import report

    results = (REPO / "docs" / "results.md").read_text()
    shown = report.readme_headline((REPO / "README.md").read_text())
    assert shown == report.headline(results), "README's headline is stale: run `make report`"
    model, _ = report.headline_model(results)
    cells = report.results_rows(results)[model]
    for column, label in report.HEADLINE_ROWS:
        assert f"| {label} | {cells[column]} |" in shown


# Committed prose and results that users read: no pointer to the private tracker, no one machine's paths.
_SCANNED = ("README.md", "docs", "benchmarks/results", "experiments", "checks")
_TEXT_SUFFIXES = {".md", ".json", ".txt", ".csv", ".yaml", ".yml", ".html"}
_ISSUE = re.compile(r"\bissues? #?[0-9]", re.I)
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home)/")


def scanned_files() -> list[Path]:
    """The text files of README.md, docs/, benchmarks/results/, experiments/ and checks/ (folders that exist)."""
    found = []
    for name in _SCANNED:
        path = REPO / name
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in _TEXT_SUFFIXES]
    return [p for p in found if "node_modules" not in p.parts]


def offending_lines(text: str) -> list[str]:
    return [line.strip()[:160] for line in text.splitlines() if _ISSUE.search(line) or _MACHINE_PATH.search(line)]


def test_the_scan_finds_what_it_looks_for():
    assert offending_lines("see issue 13 for the targets") and offending_lines("Issues 12 and 13 through gRPC")
    assert offending_lines('"split": "/work/main/.leukoflow/runs/data/split"') and offending_lines("in /tmp/x")
    assert not offending_lines("a tissue 5 mm thick; .leukoflow/runs/x; ~/home/ is fine; https://x.org/home/y")


def test_docs_and_results_name_no_tracker_issue_and_no_machine_path():
    files = scanned_files()
    assert REPO / "README.md" in files and any(p.parent.name == "results" for p in files)
    problems = {str(p.relative_to(REPO)): bad for p in files if (bad := offending_lines(p.read_text(errors="replace")))}
    assert not problems, f"say what the thing is, and use paths relative to the repository: {problems}"
