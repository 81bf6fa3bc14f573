"""Is training input-bound? Steps/s of the real tf.data pipeline vs the same model fed from in-memory tensors.

    .venv/bin/python -m benchmarks.input_pipeline --split PATH/TO/split [--model cnn] [--steps 40]

Prints a table and writes benchmarks/results/input_pipeline.json. Target: pipeline / in-memory >= 0.95
(without augmentation; with augmentation the ratio shows what the CPU-side augmentation costs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import harness

RESULTS = harness.results_dir(__file__) / "input_pipeline.json"


def _steps_per_second(model, dataset, steps: int, warmup_steps: int) -> float:
    """Time `steps` training steps after `warmup_steps` (a full epoch for tf.data, so its cache is filled)."""
    model.fit(dataset, epochs=1, steps_per_epoch=warmup_steps, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - start)


def run(split: Path, model_name: str, profile: str, steps: int, rounds: int = 2) -> dict:
    import keras
    import tensorflow as tf

    from components import domain, settings
    from components.train import input as train_input
    from components.train import models
    from components.train.fitting import compile_model

    config = settings.model_config(profile, model_name, weights="none")
    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config)
    if models.base_layer(model) is not None:
        models.set_fine_tune(model, 10_000)  # time full training steps, not a frozen base
    compile_model(model, config.learning_rate, 0.0)
    size, batch = config.image_size, config.batch_size
    count = len(train_input.labels(split, "train"))

    def real(augment: bool):
        ds = train_input.dataset(
            split, "train", size, batch, training=True, augment=augment, seed=config.seed, count=count
        )
        return ds.map(lambda x, y: (x, tf.one_hot(y, domain.NUM_CLASSES))).repeat()

    x, y = next(iter(train_input.dataset(split, "train", size, batch, cache=False)))
    memory = tf.data.Dataset.from_tensors((x, tf.one_hot(y, domain.NUM_CLASSES))).repeat()

    epoch = train_input.steps_per_epoch(count, batch)
    sources = {"in_memory": (memory, 5), "tf_data": (real(False), epoch), "tf_data_augmented": (real(True), epoch)}
    # Rounds alternate the three inputs and keep each one's best: other users' load comes and goes.
    rows: dict[str, float] = {}
    for round_index in range(rounds):
        for name, (dataset, warmup) in sources.items():
            rate = _steps_per_second(model, dataset, steps, warmup if round_index == 0 else 2)
            rows[name] = max(rows.get(name, 0.0), rate)
    result = {
        "model": model_name,
        "profile": profile,
        "image_size": size,
        "batch_size": batch,
        "steps": steps,
        "rounds": rounds,
        "steps_per_s": rows,
        "ratio_tf_data": rows["tf_data"] / rows["in_memory"],
        "ratio_tf_data_augmented": rows["tf_data_augmented"] / rows["in_memory"],
        "target_ratio": 0.95,
        "host": harness.host_facts(),
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "note": "shared machine; other processes compete for CPU (see host.load_average_1m)",
    }
    return result


def default_split() -> Path:
    """The last CLI split run's output, or a fresh split of data/ (the real images) built with the data steps."""
    from components.home import default_data_dir, home
    from components.split.cli import default_out

    if list((default_out() / "train").glob("*.tfrecord")):
        return default_out()
    root = home() / "bench" / "data"
    if list((root / "split" / "train").glob("*.tfrecord")):
        return root / "split"
    from components.dedup.executor import run_dedup
    from components.preprocess.executor import run_preprocess
    from components.split.executor import run_split
    from components.validate.executor import run_validate

    run_validate(default_data_dir(), root / "validate")
    run_dedup(root / "validate" / "manifest.csv", root / "dedup")
    run_preprocess(root / "dedup" / "kept.csv", root / "preprocess")
    run_split(root / "dedup" / "kept.csv", root / "preprocess", root / "split")
    return root / "split"


def markdown(result: dict) -> str:
    """The results table for benchmarks/results/input_pipeline.md."""
    rows = result["steps_per_s"]
    lines = [
        "## Input pipeline: tf.data vs in-memory tensors",
        "",
        f"{result['model']} ({result['profile']} profile, {result['image_size']} px, batch {result['batch_size']}), "
        f"{result['steps']} timed training steps per row; load average {result['host']['load_average_1m']:.1f} on "
        f"{result['host']['cpus']} CPUs.",
        "",
        "| input | steps/s | vs in-memory |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value:.2f} | {value / rows['in_memory']:.3f} |" for name, value in rows.items()]
    lines += ["", f"Target: tf.data / in-memory >= {result['target_ratio']} (measured {result['ratio_tf_data']:.3f})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split",
        type=Path,
        default=None,
        help="split directory with train/shard-*.tfrecord (default: the last `leukoflow data split` "
        "run's, else one built from data/ under $LEUKOFLOW_HOME/bench/)",
    )
    parser.add_argument("--model", default="cnn", help="cnn, resnet50 or mobilenetv2")
    parser.add_argument("--profile", default="quick", help="settings profile giving size and batch")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per row")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    result = run(args.split or default_split(), args.model, args.profile, args.steps)
    print(f"{'input':<20}{'steps/s':>10}{'vs in-memory':>14}")
    for name, value in result["steps_per_s"].items():
        print(f"{name:<20}{value:>10.2f}{value / result['steps_per_s']['in_memory']:>14.3f}")
    verdict = "meets" if result["ratio_tf_data"] >= result["target_ratio"] else "misses"
    print(
        f"tf.data / in-memory = {result['ratio_tf_data']:.3f} ({verdict} the {result['target_ratio']} target); "
        f"load average {result['host']['load_average_1m']:.1f} on {result['host']['cpus']} CPUs"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    args.out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
