"""A tiny split (32x32 synthetic smears in the records.py schema) and one tiny trained model, shared by the model tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fixtures.synthetic import make_synthetic_dataset

SIZE = 32


def write_split(root: Path, per_class: int = 24, seed: int = 3) -> Path:
    """Synthetic images -> split_dir/{train,val,test}/shard-*.tfrecord (stratified 50/25/25).

    The stored pixels come from the preprocess step's own decode (the serving graph's), as in the product: Pillow's
    JPEG decoder differs from TensorFlow's by up to 5/255, which moved served OOD scores across the fitted threshold.
    """
    from components import domain, records
    from components.preprocess.executor import resized_pixels

    data = make_synthetic_dataset(root / "images", per_class=per_class, size=SIZE, seed=seed, defects=False)
    split_dir = root / "split"
    per_split: dict[str, list[bytes]] = {s: [] for s in records.SPLITS}
    for label, paths in data["clean"].items():
        n = len(paths)
        cut = {"train": (0, n // 2), "val": (n // 2, 3 * n // 4), "test": (3 * n // 4, n)}
        for split, (lo, hi) in cut.items():
            for path, (encoded, pixels) in zip(paths[lo:hi], resized_pixels([str(p) for p in paths[lo:hi]], SIZE)):
                per_split[split].append(
                    records.make_example(
                        hashlib.sha256(encoded).hexdigest(), path, domain.class_index(label), encoded, pixels
                    )
                )
    for split, recs in per_split.items():
        records.write_shards(recs, split_dir / split, num_shards=2)
    return split_dir


@pytest.fixture(scope="session")
def tiny_split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("model-split"))


@pytest.fixture(scope="session")
def tiny_config():
    from components.settings import ModelConfig

    return ModelConfig(
        "cnn", image_size=SIZE, weights="none", batch_size=16, epochs=4, patience=4, learning_rate=3e-3, dropout=0.1
    )


@pytest.fixture(scope="session")
def trained(tiny_split, tiny_config, tmp_path_factory) -> dict:
    """One short training run of the tiny CNN (shared: export and evaluation tests reuse it)."""
    from components.train.executor import run_train

    out = tmp_path_factory.mktemp("trained") / "cnn"
    return run_train(tiny_split, out, tiny_config, verbose=0)
