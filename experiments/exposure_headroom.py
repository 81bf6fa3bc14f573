"""What 15% more light does to this dataset and to a CNN: how much of each smear clips, and which part costs the CNN.

Two measurements on one split (validation by default):

1. The images: on the background estimator's own grid (domain.BACKGROUND_GRID, area-averaged), the luminance
   at a few quantiles, per class, and how often each clips at x1.15 and x1.25 light. A quantile that stays below
   1.0 could serve as an exposure reference that more light does not saturate.
2. Each Keras model given (`--model`): accuracy on the clean images, on images with 15% more light (clipped, as
   evaluation's 'brightness +15%'), and on the two halves of that change, with the graph's brightness layer fed
   fixed gains instead of estimating them:
   - gain error only: the clean image scaled by the exposure the background reference misses once the
     background clips (per channel: the brighter image's gain x 1.15 / the clean image's gain), clipped at 1;
   - clipped band only: the brighter image with the true exposure undone (the clean image's gain / 1.15): the
     cells as in the clean image, the band that clipped flat below the level training normalises a background to.

    python -m experiments.exposure_headroom --model RUN/for-loop-1-iteration-0/train-op/trained/keras/model.keras \
        [--model ...] [--split DIR] [--part val]

Writes experiments/results/exposure_headroom.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

RESULTS = harness.results_dir(__file__)
GAIN = 1.15  # evaluation's 'brightness +15%'
STRONGER_GAIN = 1.25  # the top of training's exposure range (augment.EXPOSURE)
QUANTILES = (0.10, 0.25, 0.50, 0.75)


def _images(split: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    from components import domain, records

    examples = list(records.iter_examples(split / part))
    if not examples:
        raise ValueError(f"{split / part} has no records")
    pixels = np.stack([domain.load_rgb(e["encoded"]) for e in examples]).astype(np.float32) / 255.0
    return pixels, np.array([e["label"] for e in examples])


def clipping(pixels: np.ndarray, labels: np.ndarray) -> dict:
    """Luminance quantiles on the background grid, per class, and the share of images where each clips."""
    import tensorflow as tf

    from components import domain

    grid = domain.BACKGROUND_GRID
    small = tf.image.resize(pixels, (grid, grid), method="area").numpy().reshape(len(pixels), -1, 3).mean(axis=-1)
    levels = np.quantile(small, QUANTILES, axis=1).T
    rows = []
    for i, q in enumerate(QUANTILES):
        rows.append(
            {
                "quantile": q,
                "median": float(np.median(levels[:, i])),
                "per_class_median": {
                    domain.CLASS_NAMES[c]: float(np.median(levels[labels == c, i]))
                    for c in range(domain.NUM_CLASSES)
                    if (labels == c).any()
                },
                f"clips_at_{GAIN}": float(np.mean(levels[:, i] * GAIN >= 0.999)),
                f"clips_at_{STRONGER_GAIN}": float(np.mean(levels[:, i] * STRONGER_GAIN >= 0.999)),
            }
        )
    return {"quantiles": rows, "pixels_saturated_clean": float(np.mean(pixels.mean(axis=-1) >= 250 / 255))}


def decomposition(model_path: Path, pixels: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy clean, at +15% light, and under each half of that change (fixed gains in the graph)."""
    import tensorflow as tf

    from components import domain
    from components.train import models

    model = models.load_keras_model(model_path)
    layer = model.get_layer("brightness")
    if layer.method != "background":
        raise ValueError(f"{model_path}: brightness method {layer.method!r}; this measures the 'background' one")
    layer.method = "none"  # read when the graph is traced: the gains below are applied here instead
    size = int(model.input_shape[1])

    def resized(images: np.ndarray) -> np.ndarray:
        return domain.tf_resize(tf.constant(images), size).numpy()

    def gains(images: np.ndarray) -> np.ndarray:
        return domain.tf_background_gains(tf.constant(images)).numpy()

    clean, brighter = resized(pixels), resized(np.clip(pixels * GAIN, 0.0, 1.0))
    clean_gain, brighter_gain = gains(clean), gains(brighter)
    missed = brighter_gain * GAIN / clean_gain

    def accuracy(images: np.ndarray) -> float:
        predicted = model.predict(np.clip(images, 0.0, 1.0), batch_size=64, verbose=0).argmax(axis=1)
        return float((predicted == labels).mean())

    return {
        "model": str(model_path),
        "missed_exposure": [round(float(v), 4) for v in missed.mean(axis=(0, 1, 2))],
        "clean": accuracy(clean * clean_gain),
        "brightness +15%": accuracy(brighter * brighter_gain),
        "gain error only": accuracy(clean * clean_gain * missed),
        "clipped band only": accuracy(brighter * clean_gain / GAIN),
    }


def write(result: dict) -> None:
    from components import atomic_files

    atomic_files.write_text(RESULTS / "exposure_headroom.json", json.dumps(result, indent=1))
    images = result["images"]
    lines = [
        "# 15% more light: what clips, and what it costs a CNN",
        "",
        f"Measured {result['measured']} on {result['split']}/{result['part']} ({result['count']} images). "
        f"Pixels already at 250/255 or more in the clean images: {images['pixels_saturated_clean']:.1%}.",
        "",
        f"| luminance quantile (background grid) | median | per-class median | clips at x{GAIN} | clips at x{STRONGER_GAIN} |",
        "|---|---|---|---|---|",
    ]
    for row in images["quantiles"]:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in row["per_class_median"].items())
        lines.append(
            f"| {row['quantile']:.2f} | {row['median']:.3f} | {per_class} | {row[f'clips_at_{GAIN}']:.1%} | "
            f"{row[f'clips_at_{STRONGER_GAIN}']:.1%} |"
        )
    lines += [
        "",
        "| model | clean | brightness +15% | gain error only | clipped band only | missed exposure (R, G, B) |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        lines.append(
            f"| {m['model']} | {m['clean']:.2%} | {m['brightness +15%']:.2%} | {m['gain error only']:.2%} | "
            f"{m['clipped band only']:.2%} | {', '.join(f'x{v:.3f}' for v in m['missed_exposure'])} |"
        )
    atomic_files.write_text(RESULTS / "exposure_headroom.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="a Keras model file (repeatable)")
    parser.add_argument(
        "--split", type=Path, default=None, help="split directory (default: the last `leukoflow data split`)"
    )
    parser.add_argument("--part", default="val", choices=("train", "val", "test"))
    args = parser.parse_args(argv)
    split = args.split
    if split is None:
        from components.split.cli import default_out

        split = default_out()
    pixels, labels = _images(split, args.part)
    result = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "split": harness.shown_path(split),
        "part": args.part,
        "count": len(labels),
        "images": clipping(pixels, labels),
        "models": [decomposition(path, pixels, labels) for path in args.model],
    }
    write(result)
    return result


if __name__ == "__main__":
    main()
