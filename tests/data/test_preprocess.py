"""preprocess: TFRecord shards with the serving graph's pixels, deterministic, brightness recorded."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from components import domain, records
from components.preprocess.executor import run_preprocess


def test_records_match_the_serving_graph(deduped, preprocessed):
    import tensorflow as tf

    kept = {r["path"]: r for r in csv.DictReader(open(deduped["kept_csv"]))}
    examples = list(records.iter_examples(preprocessed["dir"]))
    assert len(examples) == len(kept) == preprocessed["count"]
    assert preprocessed["num_shards"] == 3 and len(records.shard_paths(preprocessed["dir"])) == 3
    for ex in examples:
        row = kept[ex["path"]]
        assert ex["id"] == row["sha256"] == hashlib.sha256(ex["encoded"]).hexdigest()
        assert domain.CLASS_NAMES[ex["label"]] == row["label"]
        assert ex["pixels"].shape == (16, 16, 3) and ex["pixels"].dtype == np.uint8
        # Exactly what serving computes from the same bytes, before normalisation.
        expected = domain.tf_resize(domain.tf_decode(tf.constant(ex["encoded"])), 16).numpy()
        assert np.array_equal(ex["pixels"], np.round(expected * 255).astype(np.uint8))


def test_grayscale_and_rgba_become_rgb(synthetic_data, preprocessed):
    by_path = {ex["path"]: ex for ex in records.iter_examples(preprocessed["dir"])}
    gray = by_path[synthetic_data["grayscale"]]["pixels"]
    assert gray.shape[-1] == 3 and np.array_equal(gray[..., 0], gray[..., 1])
    assert by_path[synthetic_data["rgba"]]["pixels"].shape == (16, 16, 3)


def test_deterministic_and_metadata(deduped, preprocessed, tmp_path):
    again = run_preprocess(deduped["kept_csv"], tmp_path, image_size=16, num_shards=3, brightness="mean")
    for a, b in zip(records.shard_paths(preprocessed["dir"]), records.shard_paths(tmp_path)):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    assert meta["brightness"] == "mean" and "tf_adjust_brightness" in meta["brightness_note"]
    assert meta["image_size"] == 16 and sum(meta["per_class"].values()) == meta["count"] == again["count"]


def test_bad_options_are_refused(deduped, tmp_path):
    with pytest.raises(ValueError, match="brightness"):
        run_preprocess(deduped["kept_csv"], tmp_path, brightness="gamma")
    with pytest.raises(FileNotFoundError, match="dedup"):
        run_preprocess(tmp_path / "missing.csv", tmp_path)
