"""The synthetic fixture itself: what it claims to hold, it holds."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from fixtures.synthetic import make_synthetic_dataset

from components import domain, settings
from components.dedup.executor import perceptual_hash


def test_description_matches_files(synthetic_data):
    root = Path(synthetic_data["root"])
    on_disk = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert on_disk == synthetic_data["files"]
    for a, b in synthetic_data["exact_pairs"]:
        assert Path(a).read_bytes() == Path(b).read_bytes()
    a, b = synthetic_data["cross_label"]
    assert Path(a).read_bytes() == Path(b).read_bytes() and Path(a).parent.name != Path(b).parent.name


def test_near_duplicates_close_and_others_far(synthetic_data):
    hashes = {p: int(perceptual_hash(Path(p).read_bytes()), 16) for p in synthetic_data["labels"]}
    related = {frozenset(p[:2]) for p in synthetic_data["near_duplicates"]}
    related |= {frozenset(p) for p in synthetic_data["exact_pairs"]} | {frozenset(synthetic_data["cross_label"])}
    for original, copy, _ in synthetic_data["near_duplicates"]:
        assert (hashes[original] ^ hashes[copy]).bit_count() <= 4
    unrelated = min(
        (hashes[a] ^ hashes[b]).bit_count()
        for a, b in itertools.combinations(hashes, 2)
        if frozenset((a, b)) not in related
    )
    assert unrelated > settings.DEDUP_HAMMING


def test_classes_separable_by_colour(clean_synthetic_data):
    """A nearest-centroid rule on mean RGB gets every clean image right, so a tiny CNN can learn them."""
    feats = {
        label: np.array([domain.load_rgb(p).reshape(-1, 3).mean(0) for p in paths])
        for label, paths in clean_synthetic_data["clean"].items()
    }
    centroids = {label: f.mean(0) for label, f in feats.items()}
    for label, f in feats.items():
        for x in f:
            assert min(centroids, key=lambda c: np.linalg.norm(x - centroids[c])) == label


def test_clean_variant_has_no_defects(tmp_path):
    data = make_synthetic_dataset(tmp_path, per_class=3, size=32, seed=5, defects=False)
    assert data["corrupt"] == [] and data["exact_pairs"] == [] and data["cross_label"] is None
    assert len(data["files"]) == 12 and data["unique_after_dedup"] == {c: 3 for c in domain.CLASS_NAMES}
