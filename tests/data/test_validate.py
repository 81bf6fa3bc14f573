"""validate: manifest of every file, quarantine, GE suite and Data Docs, layouts, missing data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from components import domain
from components.validate.executor import (
    DataNotFoundError,
    ValidationFailed,
    discover,
    folder_class,
    run_validate,
)


def test_manifest_lists_every_file_and_quarantines_corrupt(synthetic_data, validated):
    rows = list(csv.DictReader(open(validated["manifest"])))
    assert sorted(r["path"] for r in rows) == sorted(synthetic_data["files"])
    assert validated["images"] == len(synthetic_data["files"])
    assert sorted(validated["quarantined"]) == sorted(synthetic_data["corrupt"])
    by_path = {r["path"]: r for r in rows}
    for path in synthetic_data["corrupt"]:
        assert by_path[path]["status"] == "quarantined" and by_path[path]["reason"]
    quarantine = list(csv.DictReader(open(validated["quarantine"])))
    assert sorted(r["path"] for r in quarantine) == sorted(synthetic_data["corrupt"])
    # Grayscale and RGBA decode to three channels and stay valid.
    for key, mode in (("grayscale", "L"), ("rgba", "RGBA")):
        row = by_path[synthetic_data[key]]
        assert row["status"] == "ok" and row["mode"] == mode and row["channels"] == "3"
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["sha256"] and r["phash"] and float(r["mean_brightness"]) > 0 for r in ok)
    assert {r["label"] for r in rows} == set(domain.CLASS_NAMES)


def test_suite_passes_and_writes_data_docs(validated):
    assert validated["success"] is True and validated["failed_expectations"] == []
    names = {o["name"]: o for o in validated["expectations"]}
    for name in (
        "decodable",
        "three_channels_after_conversion",
        "label_in_class_set",
        "width_in_range",
        "height_in_range",
        "not_blank",
        "not_saturated",
        "per_class_minimum_count",
        "all_classes_present",
    ):
        assert name in names
    assert names["per_class_minimum_count"]["critical"] and not names["not_blank"]["critical"]
    # Two quarantined files: the decodable expectation sees them but is within its critical bound.
    assert names["decodable"]["unexpected_count"] == 2
    docs = Path(validated["data_docs"])
    assert docs.is_file()
    pages = list((docs.parent / "validations").rglob("*.html"))
    text = "".join(p.read_text() for p in pages)
    assert len(pages) == 2 and "Great Expectations" in text and "pixel_std" in text and "values must" in text
    saved = json.loads((Path(validated["manifest"]).parent / "validation.json").read_text())
    assert saved["success"] is True and saved["quarantined"] == validated["quarantined"]


def test_critical_failure_names_the_expectation(synthetic_data, tmp_path):
    with pytest.raises(ValidationFailed, match="per_class_minimum_count"):
        run_validate(synthetic_data["root"], tmp_path, min_per_class=100, raise_on_failure=True)
    result = json.loads((tmp_path / "validation.json").read_text())  # written before it raised
    assert result["success"] is False
    assert result["failed_expectations"] == ["per_class_minimum_count"]


def test_non_critical_failures_are_warnings(tmp_path):
    from PIL import Image

    for i, label in enumerate(domain.CLASS_NAMES):
        (tmp_path / "d" / label).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (40, 40), (40 * i + 10 * j, 90, 120)).save(tmp_path / "d" / label / f"{j}.png")
    result = run_validate(tmp_path / "d", tmp_path / "out", min_per_class=3)
    assert result["success"] is True  # blank images are a warning, not a failure
    assert "not_blank" in result["warnings"] and result["failed_expectations"] == []


@pytest.mark.parametrize("make", ["missing", "empty", "no_class_folders"])
def test_missing_data_says_how_to_get_it(tmp_path, make):
    target = tmp_path / "data"
    if make != "missing":
        target.mkdir()
    if make == "no_class_folders":
        (target / "other").mkdir()
        (target / "other" / "x.jpg").write_bytes(b"x")
    with pytest.raises(DataNotFoundError) as info:
        run_validate(target, tmp_path / "out")
    assert "dvc pull" in str(info.value) and "--data-dir" in str(info.value)


def test_folder_names_case_insensitive_and_public_aliases():
    assert folder_class("benign") == "Benign"
    assert folder_class("EARLY") == "Early"
    assert folder_class("[Malignant] early Pre-B") == "Early"
    assert folder_class("[Malignant] Pre-B") == "Pre"
    assert folder_class("[Malignant] Pro-B") == "Pro"
    assert folder_class("Original") is None and folder_class("preview") is None


def _copy_layout(synthetic_data: dict, root: Path, per_class: int = 3) -> None:
    """Original/ and Segmented/ copies in lower/upper-case, nested class folders."""
    names = {"Benign": "benign", "Early": "[Malignant] early Pre-B", "Pre": "PRE", "Pro": "Pro"}
    for label, files in synthetic_data["clean"].items():
        for variant in ("Original", "Segmented"):
            folder = root / "download" / "ALL dataset" / variant / names[label]
            folder.mkdir(parents=True)
            for path in files[:per_class]:
                shutil.copy(path, folder / Path(path).name)
    (root / "download" / "README.txt").write_text("not under a class folder")


def test_original_and_segmented_never_double_counted(synthetic_data, tmp_path):
    _copy_layout(synthetic_data, tmp_path)
    found = discover(tmp_path / "download")
    assert found.variants_found == ["original", "segmented"] and found.variant_used == "original"
    assert len(found.files) == 12 and found.skipped_other_variant == 12 and found.outside_class_folders == 1
    assert all("Original" in str(p) for p, _ in found.files)
    assert sorted({label for _, label in found.files}) == list(domain.CLASS_NAMES)
    segmented = discover(tmp_path / "download", variant="segmented")
    assert len(segmented.files) == 12 and all("Segmented" in str(p) for p, _ in segmented.files)
    result = run_validate(tmp_path / "download", tmp_path / "out", min_per_class=3)
    assert result["success"] and result["images"] == 12 and result["variant"] == "original"


def test_nested_class_folders_at_any_depth(synthetic_data, tmp_path):
    for label, files in synthetic_data["clean"].items():
        folder = tmp_path / "a" / "b" / label.upper() / "batch1"
        folder.mkdir(parents=True)
        for path in files[:2]:
            shutil.copy(path, folder / Path(path).name)
    found = discover(tmp_path / "a")
    assert len(found.files) == 8
    assert sorted({label for _, label in found.files}) == list(domain.CLASS_NAMES)


def test_unknown_variant_is_refused(synthetic_data, tmp_path):
    with pytest.raises(ValueError, match="variant"):
        discover(synthetic_data["root"], variant="thumbnails")
