"""The case store: validation, exact and perceptual dedup against base data and cases, conflicts, the ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from fixtures.synthetic import _jpeg, _render, _rescale

from components.cases import store
from tests.cases.conftest import case_folder, render_jpeg


def _cli(*args: str, env_home: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "cases", *args], capture_output=True, text=True, timeout=300
    )


def test_add_folder_validates_dedups_and_quarantines(base_data, tmp_path):
    """One batch: new images land, a corrupt file is quarantined, duplicates of base and batch are one case."""
    base_image = next((base_data / "Pre").glob("*.jpg")).read_bytes()
    fresh = [render_jpeg("Benign", 1), render_jpeg("Benign", 2)]
    rescaled = _jpeg(_rescale(_render("Pro", 64, np.random.default_rng(1005))))
    folder = case_folder(
        tmp_path / "batch",
        {"Benign": fresh + [fresh[0]], "Pro": [render_jpeg("Pro", 5), rescaled], "Pre": [base_image]},
        extra={"Early/broken.jpg": render_jpeg("Early", 9)[:200], "notes/readme.txt": b"x"},
    )
    cases = tmp_path / "cases"
    done = _cli(
        "add",
        str(folder),
        "--site",
        "lab-b",
        "--reviewer",
        "dr-a",
        "--cases-dir",
        str(cases),
        "--data-dir",
        str(base_data),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"] == {"added": 3, "already": 1, "duplicates": 2, "conflicts": 0, "quarantined": 1}
    assert "broken.jpg" in result["quarantined"][0]["file"]
    assert result["quarantined"][0]["reason"].startswith("not a readable image (")
    kinds = sorted(d["kind"].split(" ")[0] for d in result["duplicates"])
    assert kinds == ["exact", "near"]  # the base image (exact) and the rescaled Pro (near, of the batch's Pro)
    ledger = pd.read_csv(cases / "ledger.csv", dtype=str, keep_default_na=False)
    assert list(ledger.columns) == store.LEDGER_COLUMNS
    assert len(ledger) == 3 and set(ledger["site"]) == {"lab-b"} and set(ledger["reviewer"]) == {"dr-a"}
    for row in ledger.itertuples():
        stored = cases / row.path
        assert stored.is_file() and row.path.startswith(f"images/lab-b/{row.label}/")
        assert __import__("hashlib").sha256(stored.read_bytes()).hexdigest() == row.sha256
    quarantine = pd.read_csv(cases / "quarantine" / "quarantine.csv", dtype=str, keep_default_na=False)
    assert len(quarantine) == 1 and quarantine["reason"][0]
    assert "notes" in done.stderr  # a folder that is not a class is named, not silently read


def test_same_image_twice_is_one_case_and_two_labels_a_conflict(base_data, tmp_path):
    base = store.base_index(base_data)
    image = tmp_path / "a.jpg"
    image.write_bytes(render_jpeg("Early", 11))
    cases = tmp_path / "cases"
    first = store.add_cases([store.Candidate(image, "Early", "lab-b", "dr-a")], cases, base)
    again = store.add_cases([store.Candidate(image, "early", "lab-c", "dr-b")], cases, base)
    assert first["counts"]["added"] == 1 and again["counts"]["already"] == 1
    assert len(store.read_ledger(cases)) == 1
    other = store.add_cases([store.Candidate(image, "Benign", "lab-b", "dr-c")], cases, base)
    assert other["counts"]["conflicts"] == 1
    ledger = store.read_ledger(cases)
    assert len(ledger) == 1 and ledger["status"][0] == "conflict"
    assert "Early by dr-a" in ledger["note"][0] and "Benign by dr-c" in ledger["note"][0]
    assert not list((cases / "images").rglob("*.jpg"))  # nothing left where training reads cases
    assert (cases / ledger["path"][0]).is_file() and ledger["path"][0].startswith("conflicts/")
    listed = store.summary(cases)
    assert listed["cases"] == 0 and len(listed["conflicts"]) == 1


def test_a_base_image_with_another_label_is_a_conflict(base_data, tmp_path):
    base = store.base_index(base_data)
    source = next((base_data / "Pro").glob("*.jpg"))
    result = store.add_cases([store.Candidate(source, "Benign", "lab-b")], tmp_path / "cases", base)
    assert result["counts"]["conflicts"] == 1
    assert "labelled Pro" in result["conflicts"][0]["with"]


def test_a_blank_image_fails_the_expectation_suite(base_data, tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (200, 200, 200)).save(blank)
    result = store.add_cases([store.Candidate(blank, "Pre", "lab-b")], tmp_path / "cases", store.base_index(base_data))
    assert result["counts"]["quarantined"] == 1
    assert "not_blank" in result["quarantined"][0]["reason"]


def test_bad_site_and_missing_folder_are_clear_errors(tmp_path):
    bad = _cli("add", str(tmp_path), "--site", "../etc", "--cases-dir", str(tmp_path / "c"), "--json")
    assert bad.returncode == 1 and "site name" in json.loads(bad.stdout)["error"]
    missing = _cli("add", str(tmp_path / "nope"), "--site", "a", "--cases-dir", str(tmp_path / "c"))
    assert missing.returncode == 1 and "is not a folder" in missing.stderr
    nosite = _cli("add", str(tmp_path), "--cases-dir", str(tmp_path / "c"))
    assert nosite.returncode == 1 and "--site is required" in nosite.stderr
