"""Test helpers: a tiny SavedModel with the serving contract, candidate evaluation dirs, a split dir."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

SIZE = 16
# One colour per class, so a fixed linear map of colour means classifies the test images exactly.
CLASS_COLOURS = {0: (230, 20, 20), 1: (20, 230, 20), 2: (20, 20, 230), 3: (128, 128, 128)}
GOOD_W = np.array([[10, 0, 0, 5], [0, 10, 0, 5], [0, 0, 10, 5]], np.float32)


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def class_image(label: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(CLASS_COLOURS[label], np.int16)
    return np.clip(base + rng.integers(-10, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def export_tiny(export_dir: str | Path, weights: np.ndarray = GOOD_W, broken: bool = False) -> Path:
    """The trainer's real export (components.train.export) of a fixed Keras model: colour means -> Dense(4).

    `broken` drops the softmax, so the "probabilities" do not sum to 1.
    """
    import keras

    from components.train.export import export_saved_model

    inputs = keras.Input((SIZE, SIZE, 3))
    dense = keras.layers.Dense(4, activation=None if broken else "softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.asarray(weights, np.float32), np.zeros(4, np.float32)])
    return export_saved_model(
        model, export_dir, model_name="tiny", image_size=SIZE, brightness="none", warmup_images=[png(class_image(0))]
    )


def make_split(split_dir: Path, per_class: int = 3, seed: int = 0) -> Path:
    """split.csv plus test TFRecord shards of class-coloured PNGs."""
    from components import records

    split_dir.mkdir(parents=True, exist_ok=True)
    recs, rows = [], ["id,path,label,group_id,split"]
    for label in range(4):
        for i in range(per_class):
            rgb = class_image(label, seed * 1000 + label * 100 + i)
            rid = f"{label}-{i}-{seed}"
            recs.append(records.make_example(rid, f"/nonexistent/{rid}.png", label, png(rgb), rgb))
            rows.append(f"{rid},/nonexistent/{rid}.png,{label},{rid},test")
    records.write_shards(recs, split_dir / "test", 1)
    (split_dir / "split.csv").write_text("\n".join(rows) + "\n")
    return split_dir


PAPER = {  # the paper's figures (macro-F1, accuracy, params); recall/robustness/latency illustrative
    "resnet50": dict(macro_f1=0.97, accuracy=0.9709, params=25_600_000, recall=0.95, robust=0.97, latency=60.0),
    "mobilenetv2": dict(macro_f1=0.96, accuracy=0.9663, params=3_400_000, recall=0.93, robust=0.96, latency=15.0),
    "cnn": dict(macro_f1=0.72, accuracy=0.7975, params=1_200_000, recall=0.55, robust=0.60, latency=5.0),
}


def missed(count: int = 0, malignant: int = 9) -> dict:
    """components/evaluate/malignancy.py's figures for `count` malignant images answered Benign and not referred."""
    return {
        "malignant_images": malignant,
        "missed": count,
        "missed_share": count / malignant,
        "sensitivity": 1 - count / malignant,
        "referred_malignant": 0,
    }


def malignancy_figures(perturbations: list[str]) -> dict:
    """Missed malignancy nowhere, and magnifications that pass: x0.6 accurate, x2 inaccurate but referring."""
    return {
        "missed_malignancy": missed(),
        "robustness_missed_malignancy": {name: missed() for name in perturbations},
        "magnification": {
            "magnification x0.6": {
                "accuracy": 0.96,
                "referred": 0.02,
                "answered_accuracy": 0.97,
                "missed_malignancy": missed(),
            },
            "magnification x2": {
                "accuracy": 0.80,
                "referred": 0.3,
                "answered_accuracy": 0.99,
                "missed_malignancy": missed(),
            },
        },
    }


def trust_figures() -> dict:
    """What a calibrated export that passes the default gate's trust floors reports (components/evaluate/executor.py).

    Test referral 3% (floor 5%), ECE after temperature scaling 0.015 (floor 0.03), prediction sets covering
    98.5% against the 98% target (tolerance 0.02), and the external smears' report half referred 98% (floor 95%);
    the choose half is never gated.
    """
    from components import settings

    target = settings.CONFORMAL_COVERAGE
    return {
        "referral": {
            "test_referral_rate": 0.03,
            "ood_referral_rate": 0.02,
            "set_referral_rate": 0.02,
            "accepted": 116,
            "accepted_accuracy": 0.98,
            "referred_accuracy": 0.5,
            "coverage": round(min(1.0, target + 0.005), 4),
            "coverage_target": target,
            "mean_set_size": 1.02,
            "set_size_counts": {"0": 0, "1": 117, "2": 3, "3": 0, "4": 0},
        },
        "calibration": {"temperature": 1.4, "bins": 15, "ece_before": 0.045, "ece_after": 0.015},
        "external": {
            "folder": "other-lab",
            "halves": "sha256(file name) parity: choose 0, report 1",
            "choose": {"images": 20, "referred": 0.99, "out_of_distribution": 0.99},
            "report": {"images": 20, "referred": 0.98, "out_of_distribution": 0.98},
        },
    }


def metrics(
    model: str,
    macro_f1: float,
    accuracy: float,
    params: int,
    recall: float | dict = 0.9,
    robust: float | None = 0.97,
    latency: float | None = 10.0,
    saved_model: str | None = None,
    grayscale: float | None = 0.93,
    trust: bool = True,
) -> dict:
    """A metrics.json of the evaluate step's schema; by default it passes every floor of the default gate policy.

    `robust` is the plausible perturbation's accuracy (the gated worst), `grayscale` has its own floor; None
    leaves the figure out. `trust=False` leaves out referral, calibration and external detection, as an
    export without calibration and an evaluation without external smears write it.
    """
    from components import domain

    recalls = recall if isinstance(recall, dict) else {c: recall for c in domain.CLASS_NAMES}
    robustness = {}
    if robust is not None:
        robustness["brightness+15%"] = robust
    if grayscale is not None:
        robustness["grayscale"] = grayscale
    m = {
        "model": model,
        "accuracy": accuracy,
        "accuracy_ci": [accuracy - 0.01, min(1.0, accuracy + 0.01)],
        "macro_f1": macro_f1,
        "macro_f1_ci": [macro_f1 - 0.01, min(1.0, macro_f1 + 0.01)],
        "weighted_f1": macro_f1,
        "per_class": {c: {"precision": 0.9, "recall": r, "f1": 0.9, "support": 12} for c, r in recalls.items()},
        "confusion_matrix": [[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3]],
        "class_names": list(domain.CLASS_NAMES),
        "params": params,
        "size_bytes": params * 4,
        "latency_ms": {"batch1_p50": latency, "batch1_p95": latency} if latency is not None else {},
        "throughput_b32": 100.0,
        "robustness": robustness,
        "robustness_worst": robust,
        "robustness_worst_name": "brightness+15%" if robust is not None else None,
        "shortcut_baseline": {"accuracy": 0.9, "macro_f1": 0.88},
        "saved_model": saved_model,
        "test_images": 12,
        **malignancy_figures(list(robustness)),
    }
    if trust:
        m.update(trust_figures())
    return m


def make_candidate(root: Path, model: str, saved_model: Path, **kw) -> Path:
    """An evaluation output dir (metrics.json) whose saved_model is a copy-free reference to `saved_model`."""
    d = root / f"eval-{model}"
    d.mkdir(parents=True, exist_ok=True)
    m = metrics(model, saved_model=str(saved_model), **kw)
    (d / "metrics.json").write_text(json.dumps(m))
    return d
