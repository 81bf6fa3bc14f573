"""Which in-graph input normalisation survives another lab best: none, mean brightness, or background white balance.

The same frozen ImageNet MobileNetV2 (the offline weights), the same augmented training copies
(components/train/augment.py) and the same logistic-regression head for each method; only the
normalisation inside the graph (components/domain.py, BRIGHTNESS_METHODS) differs. Scored on the
test split and on every perturbation of components/evaluate/robustness.py (Pillow, full size,
encoded as a client would). Frozen features keep the comparison to minutes on 2 CPU cores; the
promoted model fine-tunes the top of the base on top of whichever normalisation wins here.

    python -m experiments.normalisation [--split DIR] [--size 128] [--copies 2]

Writes experiments/results/normalisation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

RESULTS = harness.results_dir(__file__)


def _features(method: str, size: int, split_dir: Path, copies: int, perturbed: dict[str, list[bytes]]) -> dict:
    import tensorflow as tf

    from components import domain
    from components.settings import ModelConfig
    from components.train import input as train_input
    from components.train import models

    model = models.build_model(ModelConfig("mobilenetv2", image_size=size, brightness=method, cache_features=True))
    head = models.calibration_features_model(model)

    def run(ds):
        feats, labels = [], []
        for x, y in ds:
            feats.append(np.asarray(head(x, training=False)[0]))
            labels.append(y.numpy())
        return np.concatenate(feats), np.concatenate(labels)

    out = {"train": [run(train_input.dataset(split_dir, "train", size, 64, cache=False))]}
    augmented = train_input.dataset(split_dir, "train", size, 64, augment=True, cache=True)
    out["train"] += [run(augmented) for _ in range(copies)]
    out["val"] = run(train_input.dataset(split_dir, "val", size, 64, cache=False))
    for name, images in perturbed.items():
        pixels = np.stack([domain.tf_preprocess_encoded(tf.constant(b), size, "none").numpy() for b in images])
        out[name] = np.concatenate(
            [np.asarray(head(pixels[i : i + 64], training=False)[0]) for i in range(0, len(pixels), 64)]
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split", type=Path, default=None, help="split directory (default: the last `leukoflow data split`)"
    )
    parser.add_argument("--size", type=int, default=128, help="model input size")
    parser.add_argument("--copies", type=int, default=2, help="augmented copies of each training image")
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from components import domain, records
    from components.domain import BRIGHTNESS_METHODS
    from components.evaluate.robustness import PERTURBATIONS, perturbed_bytes, plausible

    if args.split is None:
        from components.split.cli import default_out

        args.split = default_out()
    examples = list(records.iter_examples(args.split / "test"))
    labels = np.array([e["label"] for e in examples])
    rgb = [domain.load_rgb(e["encoded"]) for e in examples]
    perturbed = {"clean": [e["encoded"] for e in examples]}
    perturbed.update({name: perturbed_bytes(rgb, name) for name in PERTURBATIONS})
    rows = {}
    for method in BRIGHTNESS_METHODS:
        started = time.perf_counter()
        f = _features(method, args.size, args.split, args.copies, perturbed)
        x = np.concatenate([t[0] for t in f["train"]])
        y = np.concatenate([t[1] for t in f["train"]])
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        clf = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced").fit((x - mean) / std, y)
        acc = {name: float((clf.predict((f[name] - mean) / std) == labels).mean()) for name in perturbed}
        pred = clf.predict((f["clean"] - mean) / std)
        gated = {k: v for k, v in acc.items() if k in plausible()}
        worst = min(gated, key=gated.get)
        rows[method] = {
            "clean": acc["clean"],
            "macro_f1": float(f1_score(labels, pred, average="macro")),
            "worst_plausible": gated[worst],
            "worst_name": worst,
            "grayscale": acc["grayscale"],
            "mean_plausible": float(np.mean(list(gated.values()))),
            "per_perturbation": acc,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            f"{method:10s} clean {acc['clean']:.4f}  worst {gated[worst]:.4f} ({worst})  "
            f"mean {rows[method]['mean_plausible']:.4f}  grayscale {acc['grayscale']:.4f}",
            flush=True,
        )
    best = max(rows, key=lambda m: (rows[m]["worst_plausible"], rows[m]["mean_plausible"]))
    result = {
        "size": args.size,
        "copies": args.copies,
        "test_images": int(len(labels)),
        "methods": rows,
        "best": best,
        "model": "frozen ImageNet MobileNetV2 + logistic regression (C=0.1, balanced) on augmented features",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "normalisation.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# In-graph normalisation: none vs mean vs background",
        "",
        f"{result['model']}, {args.size} px, {args.copies} augmented copies; test split ({len(labels)} images), "
        "perturbations through Pillow at full size (components/evaluate/robustness.py). "
        "`python -m experiments.normalisation`.",
        "",
        "| method | clean | macro-F1 | worst plausible | mean plausible | grayscale |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        lines.append(
            f"| {method}{' (kept)' if method == best else ''} | {r['clean']:.4f} | {r['macro_f1']:.4f} | "
            f"{r['worst_plausible']:.4f} ({r['worst_name']}) | {r['mean_plausible']:.4f} | {r['grayscale']:.4f} |"
        )
    (RESULTS / "normalisation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
