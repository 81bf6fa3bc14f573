"""Cross-validated choice of the quick MobileNetV2 recipe: input size and views, the test split untouched.

One test split of 471 images (74 Benign) cannot tell recipes apart that differ by a few errors: one
Benign smear is 1.4 points of Benign recall. This pools train and val (2,674 images), caches the
frozen bottom of the base once per size exactly as training does (components/train/executor.py:
`_bottom_and_top`, the clean image in each orientation and `--copies` augmented "labs"), and runs a
stratified 5-fold cross-validation of the top fine-tune (the quick profile's optimiser, schedule and
class weights; the last epoch is kept, as the held-out fold must not choose one). Every image is scored
once, out of fold, with 1, 2 and 4 views (the mean of the views' pooled features, as models.py serves).

    python -m experiments.recipe_cv [--split DIR] [--sizes 160,192] [--copies 4] [--epochs 12] [--cut block_12_add]
        [--benign-weights 1,2] [--folds 5] [--logits DIR] [--out recipe_cv]

Writes experiments/results/<out>.{json,md} (default recipe_cv). About 40 (160 px) to 50 (192 px) minutes per size on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

RESULTS = harness.results_dir(__file__)
VIEW_COUNTS = (1, 2, 4)


def _pool(split_dir: Path, into: Path) -> Path:
    """A split directory whose `train` holds the train and val shards (links; nothing is copied)."""
    from components import records

    (into / "train").mkdir(parents=True)
    for split in ("train", "val"):
        for shard in records.shard_paths(split_dir / split):
            (into / "train" / f"{split}_{Path(shard).name}").symlink_to(Path(shard).resolve())
    return into


def _cache(config, pool: Path, copies: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Activations at the cut of every pooled image: clean [views, N, ...] (VIEW_ORDER), and per augmented copy."""
    import keras

    from components.train import cached, fitting, models
    from components.train import input as train_input

    keras.utils.set_random_seed(config.seed)
    bottom, _ = cached.bottom_and_top(models.build_model(config), config)
    views = models.graph_layers().views(max(VIEW_COUNTS))  # the served model's own orientations, stacked on the batch
    clean, labels = [], []
    for x, y in train_input.dataset(pool, "train", config.image_size, 64, cache=False):
        _, cut = bottom.predict_on_batch(views(x))
        clean.append(np.asarray(cut).reshape(max(VIEW_COUNTS), len(y), *cut.shape[1:]).astype(np.float16))
        labels.append(y.numpy())
    clean, labels = np.concatenate(clean, axis=1), np.concatenate(labels)
    augmented = train_input.dataset(pool, "train", config.image_size, 64, augment=True, seed=config.seed, cache=True)
    copies_x = []
    for _ in range(copies):
        (_, x), y = fitting.predict_arrays(bottom, augmented)
        if not np.array_equal(y, labels):
            raise RuntimeError("the augmented copies came back in another order than the clean images")
        copies_x.append(x.astype(np.float16))  # as training caches them
    return clean, copies_x, labels


def pooled_images(pool: Path) -> list[tuple[str, int]]:
    """The pooled images' (source path, label), in the order `_cache` reads them (train_input.dataset's)."""
    import tensorflow as tf

    from components import records
    from components.train import input as train_input

    ordered = train_input.serialized_records(train_input.split_shards(pool, "train"))
    parsed = (tf.io.parse_single_example(raw, records.feature_spec()) for raw in ordered)
    return [(example["image/path"].numpy().decode(), int(example["image/label"])) for example in parsed]


def _fold(
    config, clean: np.ndarray, copies: list[np.ndarray], labels: np.ndarray, train: np.ndarray, held_out: np.ndarray
) -> np.ndarray:
    """Train the top on the fold's cached copies; the held-out images' logits per view count [len(VIEW_COUNTS), n, C]."""
    import keras
    import tensorflow as tf

    from components import domain
    from components.train import cached, executor, fitting, models
    from components.train import input as train_input

    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config)
    _, top = cached.bottom_and_top(model, config)
    x = np.concatenate([clean[0][train]] + [c[train] for c in copies])
    y = np.concatenate([labels[train]] * (1 + len(copies)))
    ds = (
        tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, domain.NUM_CLASSES)))
        .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(lambda a, b: (tf.cast(a, tf.float32), b))
        .prefetch(tf.data.AUTOTUNE)
    )
    fitting.compile_model(
        top,
        fitting.learning_rate(config, train_input.steps_per_epoch(len(x), config.batch_size)),
        config.label_smoothing,
    )
    top.fit(
        ds, epochs=config.epochs, class_weight=executor.class_weights(labels[train], config.benign_weight), verbose=0
    )
    # The pooled features of each view; the head is linear, so their mean is what the served model scores.
    cached = keras.Input(top.input.shape[1:])
    top_of_base, gap = top.layers[1], model.get_layer("gap")
    pooled = keras.Model(cached, gap(top_of_base(cached, training=False)))
    kernel, bias = model.get_layer(models.OUTPUT_LAYER).get_weights()
    per_view = np.stack(
        [
            pooled.predict(clean[v][held_out].astype(np.float32), batch_size=128, verbose=0)
            for v in range(max(VIEW_COUNTS))
        ]
    )
    return np.stack([per_view[:n].mean(axis=0) @ kernel + bias for n in VIEW_COUNTS])


def _scores(labels: np.ndarray, logits: np.ndarray) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score

    from components import domain

    pred = logits.argmax(axis=1)
    matrix = confusion_matrix(labels, pred, labels=range(domain.NUM_CLASSES))
    recall = matrix.diagonal() / matrix.sum(axis=1)
    return {
        "errors": int((pred != labels).sum()),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro")),
        "recall": {c: float(r) for c, r in zip(domain.CLASS_NAMES, recall)},
        "confusion_matrix": matrix.tolist(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split", type=Path, default=None, help="split directory (default: the last `leukoflow data split`)"
    )
    parser.add_argument("--sizes", default="160,192", help="comma-separated input sizes to compare")
    parser.add_argument("--copies", type=int, default=None, help="augmented copies (default: the quick profile's)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--epochs", type=int, default=None, help="top fine-tune epochs (default: the quick profile's)")
    parser.add_argument(
        "--cut", default=None, help="the base layer whose activations are cached (default: the quick profile's)"
    )
    parser.add_argument("--benign-weights", default="1", help="comma-separated factors on Benign's class weight")
    parser.add_argument("--logits", type=Path, default=None, help="directory for the out-of-fold logits (.npz)")
    parser.add_argument("--out", default="recipe_cv", help="results file stem under experiments/results/")
    args = parser.parse_args(argv)

    from sklearn.model_selection import StratifiedKFold

    from components import atomic_files, domain, settings

    if args.split is None:
        from components.split.cli import default_out

        args.split = default_out()
    base = settings.model_config("quick", "mobilenetv2")
    benign_weights = [float(f) for f in args.benign_weights.split(",")]
    copies = base.augment_copies if args.copies is None else args.copies
    if args.epochs is not None:
        base = base.with_overrides(epochs=args.epochs)
    if args.cut is not None:
        base = base.with_overrides(cache_cut=args.cut)
    rows, load_before, paths = {}, os.getloadavg()[0], None
    with tempfile.TemporaryDirectory(prefix="recipe-cv-") as tmp:
        pool = _pool(args.split, Path(tmp))
        for size in [int(s) for s in args.sizes.split(",")]:
            config = base.with_overrides(image_size=size, views=1, augment_copies=copies)
            started = time.perf_counter()
            clean, augmented, labels = _cache(config, pool, copies)
            cache_s = time.perf_counter() - started
            for factor in benign_weights:
                factor_started = time.perf_counter()
                weighted = config.with_overrides(benign_weight=factor)
                logits = np.zeros((len(VIEW_COUNTS), len(labels), domain.NUM_CLASSES), np.float32)
                folds = StratifiedKFold(args.folds, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels)
                for k, (train, held_out) in enumerate(folds):
                    fold_started = time.perf_counter()
                    logits[:, held_out] = _fold(weighted, clean, augmented, labels, train, held_out)
                    print(
                        f"{size} px, Benign weight x{factor:g}, fold {k}: {time.perf_counter() - fold_started:.0f} s",
                        flush=True,
                    )
                suffix = "" if benign_weights == [1.0] else f"/benign x{factor:g}"
                for n, view_logits in zip(VIEW_COUNTS, logits):
                    row = _scores(labels, view_logits)
                    row.update(
                        size=size,
                        views=n,
                        benign_weight=factor,
                        cache_s=round(cache_s, 1),
                        total_s=round(cache_s + time.perf_counter() - factor_started, 1),
                    )
                    rows[f"{size}px/{n}v{suffix}"] = row
                    print(
                        f"{size} px, {n} view(s){suffix}: {row['errors']} errors, accuracy {row['accuracy']:.4f}, "
                        f"macro-F1 {row['macro_f1']:.4f}, Benign recall {row['recall']['Benign']:.4f}",
                        flush=True,
                    )
                if args.logits is not None:  # out-of-fold logits, to study decision rules without retraining
                    args.logits.mkdir(parents=True, exist_ok=True)
                    stem = f"{size}px" + (f"_benign{factor:g}" if suffix else "")
                    if paths is None:
                        paths = np.array([path for path, _ in pooled_images(pool)])
                    np.savez_compressed(
                        args.logits / f"{stem}.npz",
                        logits=logits,
                        labels=labels,
                        view_counts=np.array(VIEW_COUNTS),
                        paths=paths,
                    )
    result = {
        "pooled_images": int(len(labels)),
        "folds": args.folds,
        "copies": copies,
        "epochs": base.epochs,
        "benign_weights": benign_weights,
        "cache_cut": base.cache_cut,
        "split": harness.shown_path(args.split),
        "recipes": rows,
        "quick_profile": {"image_size": base.image_size, "views": base.views},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": len(os.sched_getaffinity(0)),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    RESULTS.mkdir(exist_ok=True)
    atomic_files.write_text(RESULTS / f"{args.out}.json", json.dumps(result, indent=2))
    lines = [
        "# Quick MobileNetV2 recipe: input size and views, cross-validated",
        "",
        f"Stratified {args.folds}-fold cross-validation on train + val ({len(labels)} images; the test split is "
        f"not used), the top (above `{base.cache_cut}`) fine-tuned on cached activations of the clean image and "
        f"{copies} augmented copies "
        f"({base.epochs} epochs, cosine, class-weighted (Benign's weight x "
        f"{', '.join(f'{f:g}' for f in benign_weights)}), last epoch), each image scored once out of fold. "
        f"The quick profile serves {base.image_size} px with {base.views} view(s). "
        f"`{harness.command_line('experiments.recipe_cv', argv if argv is not None else sys.argv[1:])}`.",
        "",
        "| recipe | errors | accuracy | macro-F1 | Benign | Early | Pre | Pro | Benign -> Early | Early -> Benign |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        rec, cm = r["recall"], r["confusion_matrix"]
        lines.append(
            f"| {name} | {r['errors']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
            + " | ".join(f"{rec[c]:.4f}" for c in rec)
            + f" | {cm[0][1]} | {cm[1][0]} |"
        )
    lines += [
        "",
        f"Cost per size ({result['cores']} CPU cores, {result['when']}, load average "
        f"{result['load_average'][0]} -> {result['load_average'][1]}): "
        + "; ".join(
            f"{name.replace('/1v', '')}: {r['total_s']:.0f} s, of which caching {r['cache_s']:.0f} s"
            for name, r in rows.items()
            if r["views"] == 1
        )
        + ".",
    ]
    atomic_files.write_text(RESULTS / f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
