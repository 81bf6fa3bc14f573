"""dedup: exact and near groups, transitive grouping, conflicts, keep policy, the pair search itself."""

from __future__ import annotations

import csv
import itertools
import json
import random
from pathlib import Path

import pytest

from components.dedup.executor import UnionFind, near_pairs, perceptual_hash, run_dedup


@pytest.mark.parametrize("threshold", [0, 1, 4, 10, 20])
def test_multi_index_search_equals_brute_force(threshold):
    rng = random.Random(threshold)
    base = [rng.getrandbits(64) for _ in range(60)]
    # Plant neighbours at every distance 0..12 so each threshold has pairs on both sides.
    hashes = list(base)
    for d in range(13):
        flipped = base[d]
        for bit in rng.sample(range(64), d):
            flipped ^= 1 << bit
        hashes.append(flipped)
    expected = {
        (i, j): (hashes[i] ^ hashes[j]).bit_count()
        for i, j in itertools.combinations(range(len(hashes)), 2)
        if (hashes[i] ^ hashes[j]).bit_count() <= threshold
    }
    assert near_pairs(hashes, threshold) == expected


def test_union_find_is_transitive():
    uf = UnionFind(5)
    uf.union(0, 1)
    uf.union(1, 2)
    uf.union(3, 4)
    assert uf.find(0) == uf.find(2) != uf.find(3) == uf.find(4)


def _groups(deduped):
    return [frozenset(g) for g in deduped["groups"]]


def test_exact_pairs_and_near_duplicates_found(synthetic_data, deduped):
    groups = _groups(deduped)
    for a, b in synthetic_data["exact_pairs"]:
        assert frozenset((a, b)) in groups
    for original, copy, kind in synthetic_data["near_duplicates"]:
        assert frozenset((original, copy)) in groups, kind
    # 2 same-label exact pairs + the cross-label pair are byte-identical.
    assert deduped["exact_pairs"] == 3
    assert len(groups) == len(synthetic_data["exact_pairs"]) + len(synthetic_data["near_duplicates"]) + 1


def test_cross_label_group_excluded_whole(synthetic_data, deduped):
    assert [frozenset(c) for c in deduped["conflicts"]] == [frozenset(synthetic_data["cross_label"])]
    kept = {r["path"] for r in csv.DictReader(open(deduped["kept_csv"]))}
    assert not kept & set(synthetic_data["cross_label"])


def test_one_kept_per_group_deterministically(synthetic_data, deduped):
    rows = list(csv.DictReader(open(deduped["kept_csv"])))
    kept = {r["path"] for r in rows}
    for a, b in synthetic_data["exact_pairs"]:
        assert a in kept and b not in kept  # the original name is shorter than copy_of_...
    for original, copy, _ in synthetic_data["near_duplicates"]:
        assert original in kept and copy not in kept
    assert not kept & set(synthetic_data["corrupt"])
    per_class = {label: sum(r["label"] == label for r in rows) for label in synthetic_data["classes"]}
    assert per_class == synthetic_data["unique_after_dedup"] == deduped["per_class_kept"]
    assert deduped["kept"] == len(rows) == sum(per_class.values())
    assert len({r["group_id"] for r in rows}) == len(rows)


def test_reports_written(deduped):
    out = Path(deduped["kept_csv"]).parent
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert {g["kind"] for g in groups} == {"exact", "near"}
    assert all(g["pairs"] and g["max_distance"] <= deduped["hamming"] for g in groups)
    assert json.loads((out / "dedup.json").read_text())["kept"] == deduped["kept"]
    report = (out / "report.md").read_text()
    assert "byte-identical pairs: 3" in report and "conflict" in report


def test_threshold_is_configurable(validated, tmp_path):
    strict = run_dedup(validated["manifest"], tmp_path / "h0", hamming=0)
    loose = run_dedup(validated["manifest"], tmp_path / "h40", hamming=40)
    groups = json.loads((tmp_path / "h0" / "groups.json").read_text())["groups"]
    assert all(p[2] == 0 for g in groups for p in g["pairs"])
    assert strict["exact_pairs"] == loose["exact_pairs"] == 3
    assert loose["kept"] < strict["kept"]  # at 40 bits unrelated images merge
    with pytest.raises(ValueError, match="hamming"):
        run_dedup(validated["manifest"], tmp_path / "bad", hamming=65)


def test_rehash_matches_manifest_hashes(validated, deduped, tmp_path):
    again = run_dedup(validated["manifest"], tmp_path, rehash=True)
    assert again["groups"] == deduped["groups"] and again["kept"] == deduped["kept"]


def test_hash_follows_domain_conversion(synthetic_data):
    rgba = Path(synthetic_data["rgba"]).read_bytes()
    assert len(perceptual_hash(rgba)) == 16
    from components.domain import ImageDecodeError

    with pytest.raises(ImageDecodeError):
        perceptual_hash(b"not an image")


def _square(x: int) -> int:
    return x * x


def test_parallel_map_keeps_order_over_a_pool():
    from components.validate.parallel import MIN_PARALLEL_ITEMS, parallel_map

    items = list(range(MIN_PARALLEL_ITEMS + 50))
    assert parallel_map(_square, items, workers=2) == [x * x for x in items]
