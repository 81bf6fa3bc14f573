"""tf.data input from the split step's shards: parallel parse, cache, shuffle, augment (train only), prefetch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components import domain, records, settings

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

# Geometry is free on smears (no canonical orientation, no canonical framing). Photometric
# changes (another lab's stain, lamp and camera) are components/train/augment.py.
ROTATION = 0.5  # fraction of 2*pi: any angle
ZOOM = 0.15  # also another objective's magnification
SHIFT = 0.1


def split_shards(split_dir: str | Path, split: str) -> list[str]:
    """The shard files of one split, with an error naming what is missing."""
    directory = Path(split_dir) / split
    if not directory.is_dir():
        raise FileNotFoundError(
            f"split directory {directory} does not exist (expected {split_dir}/{{train,val,test}}/)"
        )
    return records.shard_paths(directory)


def stored_size(split_dir: str | Path, split: str = "train") -> int:
    """The side of `image/pixels` in the shards (set by the preprocess step)."""
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(split_shards(split_dir, split)).take(1):
        return int(tf.io.parse_single_example(raw, records.feature_spec())["image/size"])
    raise ValueError(f"{split_dir}/{split} has no records")


def labels(split_dir: str | Path, split: str) -> np.ndarray:
    """All labels of a split, in shard order (parses only the label feature)."""
    import tensorflow as tf

    spec = {"image/label": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(split_shards(split_dir, split)).map(
        lambda r: tf.io.parse_single_example(r, spec)["image/label"], num_parallel_calls=tf.data.AUTOTUNE
    )
    return np.fromiter(ds.as_numpy_iterator(), dtype=np.int64)


def geometry_augmentation(seed: int):
    """A batch -> batch geometric augmentation (Keras layers, reflect fill): flips, rotation, zoom, shift."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(ROTATION, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(ZOOM, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="reflect", seed=seed + 3),
        ],
        name="augment_geometry",
    )


def serialized_records(files: list[str]) -> tf.data.Dataset:
    """The shards' serialized records in the order every reader of a split sees them."""
    import tensorflow as tf

    # Interleave shards so reading is parallel too; deterministic order keeps runs reproducible.
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def dataset(
    split_dir: str | Path,
    split: str,
    image_size: int,
    batch_size: int,
    training: bool = False,
    augment: bool = False,
    seed: int = settings.SEED,
    cache: bool = True,
    count: int | None = None,
    overexposure: float = 0.0,
) -> tf.data.Dataset:
    """Batches of (float32 [B, size, size, 3] in [0, 1], int64 label) from one split's shards.

    `overexposure`: with `augment`, how often a lab's image is also overexposed (augment.photometric).
    """
    import tensorflow as tf

    files = split_shards(split_dir, split)
    stored = stored_size(split_dir, split)
    autotune = tf.data.AUTOTUNE

    def parse(serialized):
        pixels, label = records.parse_pixels(serialized, stored)
        image = tf.image.convert_image_dtype(pixels, tf.float32)
        if stored != image_size:
            image = domain.tf_resize(image, image_size)
        return image, label

    ds = serialized_records(files).map(parse, num_parallel_calls=autotune, deterministic=True)
    if count is not None:  # a known epoch length: Keras then shows progress and does not warn at epoch end
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if cache:
        ds = ds.cache()  # decoded, resized pixels: later epochs skip parsing entirely
    if training:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    if augment:  # per image, after the cache: every epoch (and every cached copy) draws a new lab
        from components.train.augment import photometric

        ds = ds.map(lambda x, y: (photometric(x, overexposure), y), num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=False)
    if augment:
        geometry = geometry_augmentation(seed)
        ds = ds.map(
            lambda x, y: (tf.clip_by_value(geometry(x, training=True), 0.0, 1.0), y), num_parallel_calls=autotune
        )
    return ds.prefetch(autotune)


def steps_per_epoch(count: int, batch_size: int) -> int:
    return max(1, math.ceil(count / batch_size))


def pixels_and_labels(split_dir: str | Path, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory (float32 [N, size, size, 3], int64 [N]); for evaluation and benchmarks."""
    xs, ys = [], []
    for x, y in dataset(split_dir, split, image_size, 256, cache=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        raise ValueError(f"{split_dir}/{split} has no records")
    return np.concatenate(xs), np.concatenate(ys)
