"""The reference profile built from a real (tiny) TFRecord train split, and its lookup in a model version."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fixtures.images import encode_jpeg

from components import records
from components.host_features import FEATURE_NAMES
from components.reference.executor import build_reference, find_reference, load_reference


def test_build_reference_from_train_split(tmp_path):
    rng = np.random.default_rng(0)
    serialized = []
    for i in range(8):
        label = i % 4
        rgb = np.clip(rng.normal(150 + 20 * label, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        serialized.append(records.make_example(f"id{i}", f"/x/{i}.jpg", label, encode_jpeg(rgb, quality=95), rgb))
    split = tmp_path / "split"
    records.write_shards(serialized, split / "train", num_shards=2)
    records.write_shards(serialized[:2], split / "test", num_shards=1)  # not part of the reference

    result = build_reference(split, tmp_path / "out" / "reference.parquet")
    assert result["images"] == 8
    assert result["per_class"] == {"Benign": 2, "Early": 2, "Pre": 2, "Pro": 2}
    frame = load_reference(result["reference"])
    assert list(frame.columns) == ["label", *FEATURE_NAMES]
    # Brighter classes were rendered brighter: the features see it.
    means = frame.groupby("label")["brightness_mean"].mean()
    assert means["Benign"] < means["Pro"]
    assert "path" not in frame.columns  # no file names (patient identifiers) in the reference

    # Lookup: the newest model version that carries a reference.
    model_dir = tmp_path / "models" / "leukemia"
    for version in (1, 2, 3):
        (model_dir / str(version)).mkdir(parents=True)
    for version in (1, 2):
        (model_dir / str(version) / "assets.extra").mkdir()
        shutil.copy(result["reference"], model_dir / str(version) / "assets.extra" / "reference_features.parquet")
    assert find_reference(model_dir) == model_dir / "2" / "assets.extra" / "reference_features.parquet"
    assert find_reference(model_dir, 1).parent.parent.name == "1"
    assert find_reference(model_dir, 3) is None


def test_build_reference_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train/ split"):
        build_reference(tmp_path, tmp_path / "r.parquet")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_reference(tmp_path / "missing.parquet")
