"""How fast this machine is right now: a fixed MobileNetV2 forward pass, to put a run's wall time in context.

    .venv/bin/python -m benchmarks.host_speed [--repeats 3]

The shared 2-core machines these runs use change speed by a third within a day (the same unchanged steps
of `make run` took 638 s one hour and 836 s the next). This measures the quick profile's heaviest kernel,
MobileNetV2 at 192 px (random weights: nothing to download, the same arithmetic), batch 32, CPU, and prints
images/s (median of `--repeats` rounds of 10 batches). Run it just before and after `make run`; the README's run
table reports both beside the wall time. Appends to benchmarks/results/host_speed.json and rewrites host_speed.md.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from benchmarks import harness
from components import atomic_files

RESULTS = harness.results_dir(__file__)
SIZE, BATCH, BATCHES = 192, 32, 10


def measure(repeats: int = 3) -> dict:
    """Images/s of a MobileNetV2 (192 px, random weights) forward pass at batch 32: each round and the median."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None, include_top=False)
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).random((BATCH, SIZE, SIZE, 3), dtype=np.float32))
    forward(x)  # trace and allocate
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(BATCHES):
            forward(x).numpy()
        rounds.append(BATCH * BATCHES / (time.perf_counter() - start))
    return {"images_per_s": float(np.median(rounds)), "rounds": [round(r, 1) for r in rounds]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of 10 batches (the median is reported)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **harness.host_facts(),
        "model": f"MobileNetV2 {SIZE} px, batch {BATCH}, random weights",
        **measure(args.repeats),
    }
    print("| measured (UTC) | CPUs | MobileNetV2 192 px forward |")
    print("|---|---|---|")
    print(f"| {result['measured_at']} | {result['cpus']} | {result['images_per_s']:.1f} images/s |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "host_speed.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append(result)
    atomic_files.write_text(path, json.dumps(history, indent=1))
    rows = [
        f"| {h['measured_at']} | {h['cpus']} | {h['images_per_s']:.1f} | {', '.join(map(str, h['rounds']))} |"
        for h in history
    ]
    atomic_files.write_text(
        RESULTS / "host_speed.md",
        "\n".join(
            [
                "### Host speed",
                "",
                "`python -m benchmarks.host_speed`: MobileNetV2 at 192 px (random weights), batch 32, CPU "
                "forward pass, images/s (median of the rounds); measured before and after runs to put their wall time in context.",
                "",
                "| measured (UTC) | CPUs | images/s | rounds |",
                "|---|---|---|---|",
                *rows,
                "",
            ]
        ),
    )
    return result


if __name__ == "__main__":
    main()
