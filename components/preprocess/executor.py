"""Preprocess the kept images into TFRecord shards that tf.data streams.

Each image is decoded and resized by `domain.tf_decode` + `domain.tf_resize`, the
same graph ops the exported serving signature runs, so training pixels and
serving pixels cannot drift apart. Pixels are stored as uint8 beside the
original bytes (records.py schema), in a deterministic order (sorted by path,
round-robin over shards).

Brightness: the paper adjusts brightness before training. Here the method is
recorded in preprocess.json but not applied to the stored pixels: it is applied
inside the model graph by `domain.tf_adjust_brightness` (ModelConfig.brightness),
so the exported SavedModel applies exactly the same adjustment to what serving
receives. Method "mean" rescales each image so its mean intensity is
domain.BRIGHTNESS_TARGET (clipped to [0, 1]); "none" leaves pixels as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from components import atomic_files, domain, records, settings

log = logging.getLogger(__name__)


class ShardWriter:
    """Streams serialized records round-robin into `count` shards; temp names until closed."""

    def __init__(self, directory: str | Path, num_shards: int, total: int) -> None:
        import tensorflow as tf

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.tfrecord"):  # a re-run must not mix old and new shards
            stale.unlink()
        count = max(1, min(num_shards, total))
        self.paths = [self.directory / records.SHARD_PATTERN.format(index=i, count=count) for i in range(count)]
        self._tmp = [p.with_suffix(".tfrecord.tmp") for p in self.paths]
        self._writers = [tf.io.TFRecordWriter(str(p)) for p in self._tmp]
        self.written = 0

    def write(self, record: bytes) -> None:
        self._writers[self.written % len(self._writers)].write(record)
        self.written += 1

    def close(self) -> list[str]:
        for writer in self._writers:
            writer.close()
        for tmp, final in zip(self._tmp, self.paths):
            tmp.replace(final)
        return [str(p) for p in self.paths]


def resized_pixels(paths: list[str], image_size: int):
    """Yield (encoded bytes, uint8 [size, size, 3]) per file, via the serving graph's decode and resize."""
    import tensorflow as tf

    def _prepare(path):
        data = tf.io.read_file(path)
        image = domain.tf_resize(domain.tf_decode(data), image_size)
        return data, tf.cast(tf.round(image * 255.0), tf.uint8)

    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string))
    dataset = dataset.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(16)
    yield from dataset.as_numpy_iterator()


def run_preprocess(
    kept_csv: str | Path,
    out_dir: str | Path,
    image_size: int = domain.IMAGE_SIZE,
    num_shards: int = settings.NUM_SHARDS,
    brightness: str = "none",
) -> dict:
    """Write `out_dir/shard-*.tfrecord` and `preprocess.json` for the rows of kept.csv; return the summary."""
    import pandas as pd

    if brightness not in domain.BRIGHTNESS_METHODS:
        raise ValueError(
            f"unknown brightness method {brightness!r}; expected one of {', '.join(domain.BRIGHTNESS_METHODS)}"
        )
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    kept_csv = Path(kept_csv)
    if not kept_csv.is_file():
        raise FileNotFoundError(f"{kept_csv} not found; run `leukoflow data dedup` first")
    kept = pd.read_csv(kept_csv, dtype={"sha256": str}, keep_default_na=False)
    kept = kept.sort_values("path").reset_index(drop=True)
    if kept.empty:
        raise ValueError(f"{kept_csv} lists no images")
    duplicated = kept["sha256"][kept["sha256"].duplicated()]
    if not duplicated.empty:  # the record id is the sha256; dedup guarantees it is unique
        raise ValueError(f"{kept_csv} holds {len(duplicated)} repeated sha256 ids; run dedup before preprocess")

    out = Path(out_dir)
    paths = kept["path"].tolist()
    writer = ShardWriter(out, num_shards, len(kept))
    for row, (data, pixels) in zip(kept.itertuples(index=False), resized_pixels(paths, image_size)):
        writer.write(records.make_example(row.sha256, row.path, domain.class_index(row.label), data, pixels))
    shards = writer.close()
    if writer.written != len(kept):
        raise RuntimeError(f"wrote {writer.written} records for {len(kept)} images")

    result = {
        "count": len(kept),
        "image_size": image_size,
        "per_class": {c: int((kept["label"] == c).sum()) for c in domain.CLASS_NAMES},
        "num_shards": len(shards),
        "shards": shards,
        "brightness": brightness,
        "brightness_note": (
            "applied inside the model graph by components.domain.tf_adjust_brightness "
            "(training and the exported serving signature alike); stored pixels are unadjusted"
        ),
        "resize": "components.domain.tf_decode + tf_resize (bilinear, antialias), as in serving",
        "kept_csv": str(kept_csv),
    }
    atomic_files.write_json(out / "preprocess.json", result)
    log.info("preprocess: %d images -> %d shards at %dpx in %s", len(kept), len(shards), image_size, out)
    return result
