"""The TFRecord schema of preprocessed images: written by preprocess, routed by split, read by training and evaluation.

One tf.train.Example per image:
- `image/id`: sha256 of the original file (bytes, hex)
- `image/path`: the original file's path
- `image/label`: class index in domain.CLASS_NAMES (int64)
- `image/encoded`: the original file's bytes (what a client sends to serving)
- `image/pixels`: the image decoded and resized by the domain module, uint8 [size, size, 3], raw bytes
- `image/size`: the side of `image/pixels` (int64)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

SHARD_PATTERN = "shard-{index:05d}-of-{count:05d}.tfrecord"
SPLITS: tuple[str, ...] = ("train", "val", "test")


def make_example(image_id: str, path: str, label: int, encoded: bytes, pixels: np.ndarray) -> bytes:
    """Serialize one image as a tf.train.Example."""
    import tensorflow as tf

    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[0] != pixels.shape[1] or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be uint8 [size, size, 3], got {pixels.dtype} {pixels.shape}")

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/id": _bytes(image_id.encode()),
                "image/path": _bytes(str(path).encode()),
                "image/label": _int(label),
                "image/encoded": _bytes(encoded),
                "image/pixels": _bytes(pixels.tobytes()),
                "image/size": _int(pixels.shape[0]),
            }
        )
    )
    return example.SerializeToString()


def feature_spec() -> dict:
    import tensorflow as tf

    return {
        "image/id": tf.io.FixedLenFeature([], tf.string),
        "image/path": tf.io.FixedLenFeature([], tf.string),
        "image/label": tf.io.FixedLenFeature([], tf.int64),
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/pixels": tf.io.FixedLenFeature([], tf.string),
        "image/size": tf.io.FixedLenFeature([], tf.int64),
    }


def parse_pixels(serialized: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.data map: serialized Example -> (uint8 [size, size, 3], int64 label)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    pixels = tf.reshape(tf.io.decode_raw(parsed["image/pixels"], tf.uint8), [size, size, 3])
    return pixels, parsed["image/label"]


def shard_paths(directory: str | Path) -> list[str]:
    """The shard files of one directory, sorted; a clear error when there are none."""
    paths = sorted(str(p) for p in Path(directory).glob("*.tfrecord"))
    if not paths:
        raise FileNotFoundError(f"no TFRecord shards (*.tfrecord) in {directory}")
    return paths


def iter_examples(directory: str | Path) -> Iterator[dict]:
    """Every record of a shard directory as a dict of Python values (host-side use)."""
    import tensorflow as tf

    for path in shard_paths(directory):
        for raw in tf.data.TFRecordDataset(path):
            parsed = tf.io.parse_single_example(raw, feature_spec())
            size = int(parsed["image/size"])
            yield {
                "id": parsed["image/id"].numpy().decode(),
                "path": parsed["image/path"].numpy().decode(),
                "label": int(parsed["image/label"]),
                "encoded": parsed["image/encoded"].numpy(),
                "pixels": np.frombuffer(parsed["image/pixels"].numpy(), np.uint8).reshape(size, size, 3),
            }


def write_shards(records: list[bytes], directory: str | Path, num_shards: int) -> list[str]:
    """Write serialized records round-robin into `num_shards` files; returns their paths.

    Written to temporary names and renamed, so a crash leaves no half-written shard.
    """
    import tensorflow as tf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, min(num_shards, len(records))) if records else 1
    paths = [directory / SHARD_PATTERN.format(index=i, count=count) for i in range(count)]
    tmp_paths = [p.with_suffix(".tfrecord.tmp") for p in paths]
    writers = [tf.io.TFRecordWriter(str(p)) for p in tmp_paths]
    try:
        for i, record in enumerate(records):
            writers[i % count].write(record)
    finally:
        for writer in writers:
            writer.close()
    for tmp, final in zip(tmp_paths, paths):
        tmp.replace(final)
    return [str(p) for p in paths]
