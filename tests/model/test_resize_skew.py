"""Training sees the pixels serving computes: both resize the source image to the model's size once.

Stored at the source size (what every profile does), the training input and the serving graph agree to the
uint8 rounding of the stored pixels; stored smaller (the old quick profile: 224 -> 128 -> 96), they differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from components import domain, records
from components.preprocess.executor import resized_pixels
from components.train import input as train_input

SOURCE, MODEL = 64, 24


def _serving_and_training(tmp_path, stored: int) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):  # smooth colour fields with fine detail, like a smear: resizing twice shows
        base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        rgb = np.asarray(Image.fromarray(base).resize((SOURCE, SOURCE), Image.BICUBIC))
        rgb = np.clip(rgb.astype(int) + rng.integers(-40, 40, rgb.shape), 0, 255).astype(np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(rgb).save(path)
        paths.append(str(path))
    examples = [
        records.make_example(str(i), p, 0, data, pixels)
        for i, (p, (data, pixels)) in enumerate(zip(paths, resized_pixels(paths, stored)))
    ]
    split = tmp_path / f"split-{stored}"
    records.write_shards(examples, split / "train", 1)
    training = np.concatenate([x.numpy() for x, _ in train_input.dataset(split, "train", MODEL, 8, cache=False)])
    serving = np.stack([domain.tf_preprocess_encoded(tf.constant(open(p, "rb").read()), MODEL).numpy() for p in paths])
    return training, serving


@pytest.fixture(scope="module")
def at_source(tmp_path_factory):
    return _serving_and_training(tmp_path_factory.mktemp("source"), SOURCE)


def test_training_pixels_match_serving_when_stored_at_the_source_size(at_source):
    training, serving = at_source
    assert training.shape == serving.shape == (6, MODEL, MODEL, 3)
    assert np.abs(training - serving).max() <= 1.5 / 255  # uint8 rounding of the stored pixels only


def test_a_smaller_stored_size_resizes_twice_and_skews(at_source, tmp_path):
    training, serving = _serving_and_training(tmp_path, 40)
    skew = np.abs(training - serving).max()
    assert skew > 4 * np.abs(at_source[0] - at_source[1]).max() and skew > 3 / 255
