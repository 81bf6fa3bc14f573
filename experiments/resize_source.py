"""What storing shards at the source size costs: the quick profile's old 128 px shards vs 224 px (no skew).

    .venv/bin/python -m experiments.resize_source [--data-dir data] [--images 400] [--model-size 96]

For N real images: the preprocess time (decode + resize + serialize), the shard bytes, and the first
(uncached) pass of the training input at the model's size; later epochs read the cache of resized pixels
either way. Writes experiments/results/resize_source.json. Scale by 3,256 / N for the whole dataset.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from benchmarks import harness

RESULTS = harness.results_dir(__file__) / "resize_source.json"


def measure(paths: list[str], stored: int, model_size: int, work: Path) -> dict:
    from components import records
    from components.preprocess.executor import resized_pixels
    from components.train import input as train_input

    started = time.perf_counter()
    examples = [
        records.make_example(str(i), p, i % 4, data, pixels)
        for i, (p, (data, pixels)) in enumerate(zip(paths, resized_pixels(paths, stored)))
    ]
    shards = records.write_shards(examples, work / f"split-{stored}" / "train", 8)
    preprocess_s = time.perf_counter() - started
    best = float("inf")
    for _ in range(2):  # the first, uncached epoch of training input; best of two
        started = time.perf_counter()
        for _ in train_input.dataset(work / f"split-{stored}", "train", model_size, 32, cache=False):
            pass
        best = min(best, time.perf_counter() - started)
    return {
        "stored": stored,
        "preprocess_s": round(preprocess_s, 2),
        "first_epoch_input_s": round(best, 2),
        "shard_bytes": sum(Path(s).stat().st_size for s in shards),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--model-size", type=int, default=96)
    args = parser.parse_args()

    from components import domain

    files = sorted(str(p) for p in Path(args.data_dir).rglob("*") if p.suffix.lower() in domain.IMAGE_SUFFIXES)
    paths = files[:: max(1, len(files) // args.images)][: args.images]
    if not paths:
        raise SystemExit(f"no images under {args.data_dir}")
    with tempfile.TemporaryDirectory() as tmp:
        measure(paths[:16], 64, args.model_size, Path(tmp) / "warmup")  # TF start-up out of the figures
        rows = [measure(paths, stored, args.model_size, Path(tmp)) for stored in (128, domain.IMAGE_SIZE)]
    result = {
        "images": len(paths),
        "model_size": args.model_size,
        "rows": rows,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    for r in rows:
        print(
            f"stored {r['stored']:>3} px: preprocess {r['preprocess_s']:6.2f} s, first-epoch input at "
            f"{args.model_size} px {r['first_epoch_input_s']:5.2f} s, shards {r['shard_bytes'] / 1e6:6.1f} MB "
            f"({len(paths)} images)"
        )


if __name__ == "__main__":
    main()
