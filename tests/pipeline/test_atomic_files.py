"""components.atomic_files: readers see the old file or the new one, never half of one, and no temp file stays."""

from __future__ import annotations

import json
import stat

import pytest

from components import atomic_files


def test_write_text_json_csv_replace_the_file(tmp_path):
    pd = pytest.importorskip("pandas")
    target = tmp_path / "out" / "a.json"  # the folder is created
    atomic_files.write_json(target, {"when": tmp_path})  # paths (and dates) become strings
    assert json.loads(target.read_text()) == {"when": str(tmp_path)}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    atomic_files.write_text(target, "second", fsync=True)
    assert target.read_text() == "second"
    atomic_files.write_csv(tmp_path / "t.csv", pd.DataFrame({"x": [1, 2]}))
    assert (tmp_path / "t.csv").read_text().splitlines() == ["x", "1", "2"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "out", "t.csv"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    seen = []

    def half_then_fail(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_files.replace_file(target, half_then_fail)
    assert target.read_text() == "old"
    assert seen[0].suffix == ".md" and seen[0].parent == tmp_path  # writers that choose a format by suffix
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
