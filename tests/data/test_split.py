"""split: stratified 70/15/15, seeded, groups whole, leakage checked, records routed, small classes refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import domain, records
from components.split.executor import SplitError, assign_splits, check_no_leakage, run_split


def test_counts_add_up_and_every_class_in_every_split(deduped, split_result):
    rows = list(csv.DictReader(open(split_result["split_csv"])))
    assert len(rows) == deduped["kept"] == split_result["images"]
    assert sum(split_result["counts"].values()) == deduped["kept"]
    for label in domain.CLASS_NAMES:
        per = split_result["per_class"][label]
        assert all(per[s] >= 1 for s in records.SPLITS)
        assert per["train"] > per["val"] and per["train"] > per["test"]
        assert sum(per.values()) == deduped["per_class_kept"][label]
    counts = pd.read_csv(Path(split_result["dir"]) / "counts.csv")
    assert counts.set_index("label").loc["total", "total"] == deduped["kept"]
    assert "| Benign |" in (Path(split_result["dir"]) / "counts.md").read_text()


def test_no_leakage(split_result):
    frame = pd.read_csv(split_result["split_csv"])
    assert (frame.groupby("group_id")["split"].nunique() == 1).all()
    assert (frame.groupby("id")["split"].nunique() == 1).all()
    assert split_result["leakage_check"].startswith("passed")


def test_records_routed_to_their_split(split_result):
    frame = pd.read_csv(split_result["split_csv"]).set_index("id")
    for name in records.SPLITS:
        ids = [ex["id"] for ex in records.iter_examples(Path(split_result["dir"]) / name)]
        assert len(ids) == split_result["counts"][name] == len(set(ids))
        assert set(frame.loc[ids, "split"]) == {name}
    assert (Path(split_result["dir"]) / "preprocess.json").is_file()


def test_reproducible_and_seed_dependent(deduped, split_result, tmp_path):
    same = run_split(deduped["kept_csv"], None, tmp_path / "same", seed=7)
    other = run_split(deduped["kept_csv"], None, tmp_path / "other", seed=8)
    first = Path(split_result["split_csv"]).read_text()
    assert Path(same["split_csv"]).read_text() == first
    assert Path(other["split_csv"]).read_text() != first


def _frame(per_class: int, group_size: int = 1) -> pd.DataFrame:
    rows = []
    for label in domain.CLASS_NAMES:
        for i in range(per_class):
            rows.append(
                {
                    "id": f"{label}{i}",
                    "path": f"/d/{label}/{i:03d}.jpg",
                    "label": label,
                    "group_id": f"{label}-g{i // group_size}",
                }
            )
    return pd.DataFrame(rows)


def test_groups_stay_whole_and_ratios_hold():
    frame = assign_splits(_frame(60, group_size=3), (0.7, 0.15, 0.15), seed=1)
    assert (frame.groupby("group_id")["split"].nunique() == 1).all()
    shares = frame[frame["label"] == "Pre"]["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) <= 0.05 and abs(shares["test"] - 0.15) <= 0.05
    # Input order does not matter.
    shuffled = assign_splits(_frame(60, group_size=3).sample(frac=1, random_state=3), (0.7, 0.15, 0.15), seed=1)
    assert shuffled.set_index("id")["split"].sort_index().equals(frame.set_index("id")["split"].sort_index())


def test_too_small_class_fails_clearly():
    frame = _frame(10)
    frame = frame[~((frame["label"] == "Pro") & (frame["id"].str[-1].astype(int) >= 3))]
    with pytest.raises(SplitError, match=r"class Pro has 3 images.*at least 7"):
        assign_splits(frame, (0.7, 0.15, 0.15), seed=0)


def test_bad_ratios_refused():
    with pytest.raises(SplitError, match="ratios"):
        assign_splits(_frame(10), (0.8, 0.15, 0.15), seed=0)


def test_leakage_check_catches_near_duplicates_across_splits():
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "path": ["/a", "/b", "/c"],
            "label": ["Pre"] * 3,
            "group_id": ["g1", "g2", "g3"],
            "split": ["train", "test", "val"],
            "phash": ["ffff0000ffff0000", "ffff0000ffff0001", "0123456789abcdef"],
        }
    )
    with pytest.raises(SplitError, match="near-duplicate"):
        check_no_leakage(frame, hamming=4)
    frame.loc[1, "group_id"] = "g1"
    with pytest.raises(SplitError, match="group_id"):
        check_no_leakage(frame, hamming=4)


def test_pseudo_slides_follow_the_context_and_keep_duplicates_whole():
    """Two drawn 'slides' per class (a pink and a blue background): the clusters are the slides."""
    from components.split import slides

    rng = np.random.default_rng(0)
    pink, blue = np.array([0.9, 0.1, 0.3]), np.array([0.1, 0.2, 0.9])
    features = np.stack([(pink if i % 2 else blue) + rng.normal(0, 0.01, 3) for i in range(12)])
    labels = ["Benign"] * 6 + ["Early"] * 6
    ids = slides.cluster_slides(features, labels, min_groups=2, images_per_slide=3)
    assert len(set(ids)) == 4 and all(i.startswith(("Benign-slide", "Early-slide")) for i in ids)
    for a in range(12):
        for b in range(12):
            same_context = (a % 2 == b % 2) and (labels[a] == labels[b])
            assert (ids[a] == ids[b]) == same_context
    merged = slides.merge_duplicate_groups(["s1", "s2", "s2", "s3"], ["g1", "g1", "g1", "g2"])
    assert merged == ["s2", "s2", "s2", "s3"]
    with pytest.raises(ValueError, match="labels"):
        slides.cluster_slides(features, labels[:3], min_groups=2)


def test_split_by_slide_keeps_pseudo_slides_and_duplicate_groups_whole(deduped, tmp_path):
    by_slide = run_split(deduped["kept_csv"], None, tmp_path / "slides", seed=7)
    image_level = run_split(deduped["kept_csv"], None, tmp_path / "images", seed=7, by_slide=False)
    assert by_slide["grouping"].startswith("pseudo-slides") and image_level["grouping"].startswith("duplicate")
    frame = pd.read_csv(tmp_path / "slides" / "split.csv")
    assert (frame.groupby("group_id")["split"].nunique() == 1).all()
    assert (frame.groupby("dedup_group")["split"].nunique() == 1).all()
    assert frame["group_id"].str.contains("-slide-").all()
    # A dozen images a class: each class's 14 pseudo-slides (twice the 7 a 15% split needs) take all of them.
    assert by_slide["groups"] <= image_level["groups"] == by_slide["duplicate_groups"]
