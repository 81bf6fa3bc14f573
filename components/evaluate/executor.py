"""run_evaluate: the exported model on the test split -> metrics.json (docs/architecture.md schema) + confusion matrix PNG.

Everything goes through the SavedModel's `serving_default` on encoded bytes, as a client sends them:
the original test images, their perturbed copies (components/evaluate/robustness.py) and, when given,
another lab's smears (referral, calibration and OOD figures from components/evaluate/trust.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import atomic_files, domain, model_metadata, records, settings
from components.evaluate.metrics import BOOTSTRAP_RESAMPLES, bootstrap_ci, classification_metrics
from components.train import calibration
from components.train import input as train_input

log = logging.getLogger(__name__)


def find_saved_model(model_dir: str | Path) -> Path:
    """`model_dir/saved_model` (a training output) or `model_dir` itself (a SavedModel)."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / "saved_model", model_dir):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {model_dir} or {model_dir / 'saved_model'}")


def latency(serve, encoded: list[bytes], runs: int = 50, batch: int = 32, batch_runs: int = 5) -> dict:
    """CPU latency of `serving_default` on real encoded images: batch-1 p50/p95 (ms) and batch-32 images/s."""
    import tensorflow as tf

    singles = [tf.constant([encoded[i % len(encoded)]]) for i in range(runs)]
    for x in singles[:3]:
        serve(images=x)  # warm-up: first calls trace and allocate
    times = []
    for x in singles:
        start = time.perf_counter()
        serve(images=x)["probabilities"].numpy()
        times.append((time.perf_counter() - start) * 1000)
    big = tf.constant([encoded[i % len(encoded)] for i in range(batch)])
    serve(images=big)
    start = time.perf_counter()
    for _ in range(batch_runs):
        serve(images=big)["probabilities"].numpy()
    elapsed = time.perf_counter() - start
    return {
        "latency_ms": {"batch1_p50": float(np.percentile(times, 50)), "batch1_p95": float(np.percentile(times, 95))},
        "throughput_b32": float(batch * batch_runs / elapsed),
    }


def save_confusion_png(matrix: list[list[int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(domain.CLASS_NAMES)), domain.CLASS_NAMES)
    ax.set_yticks(range(len(domain.CLASS_NAMES)), domain.CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    fig.tight_layout()
    try:
        atomic_files.replace_file(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


TRUST_OUTPUTS = (
    "probabilities",
    "refer",
    "in_distribution",
    "prediction_set",
    "ood_score",
    "leukocyte_fraction",
    "leukocyte_in_view",
)


def _keras_logits_fn(saved_model: Path, meta):
    """A function: encoded images -> logits, from the Keras copy kept beside the SavedModel (the energy
    baseline needs them); None when there is no copy. The copy loads once, for every call."""
    import tensorflow as tf

    from components.train import models

    if not meta.keras_model or not (saved_model / "assets.extra" / meta.keras_model).is_file():
        return None
    model = models.load_keras_model(saved_model / "assets.extra" / meta.keras_model)
    features = models.calibration_features_model(model)
    kernel, bias = model.get_layer(models.OUTPUT_LAYER).get_weights()

    size = meta.image_size

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def head_features(encoded):  # one graph per batch: eager per-image decoding took 3x the model's time
        pixels = tf.map_fn(
            lambda b: domain.tf_preprocess_encoded(b, size, "none"),
            encoded,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return features(pixels, training=False)[0]

    def logits(images: list[bytes]) -> np.ndarray:
        out = [
            np.asarray(head_features(tf.constant(images[i : i + 32]))) @ kernel + bias
            for i in range(0, len(images), 32)
        ]
        return np.concatenate(out)

    return logits


def _external(run, external_dir: str | Path, clean: dict, encoded: list[bytes], saved_model: Path, meta) -> dict:
    """Out-of-distribution detection on another lab's smears: referral per half, AUROC of each method."""
    from components.evaluate import trust

    halves = trust.external_halves(external_dir)
    result: dict = {"folder": Path(external_dir).name, "halves": "sha256(file name) parity: choose 0, report 1"}
    keras_logits = _keras_logits_fn(saved_model, meta)
    test_logits = keras_logits(encoded) if keras_logits is not None else None
    for half, paths in halves.items():
        images = [p.read_bytes() for p in paths]
        out = run(images)
        entry: dict = {"images": len(images)}
        if "refer" in out:
            entry["referred"] = float(out["refer"].mean())
            entry["out_of_distribution"] = float((~out["in_distribution"]).mean())
            entry["confident_stage"] = float(
                (~out["refer"] & (out["probabilities"].max(axis=1) >= meta.low_confidence)).mean()
            )
            logits = keras_logits(images) if keras_logits is not None else None
            ins = trust.detection_scores(clean["probabilities"], clean["ood_score"], test_logits)
            outs = trust.detection_scores(out["probabilities"], out["ood_score"], logits)
            entry["auroc"] = {name: trust.auroc(ins[name], outs[name]) for name in ins}
        entry["stage_answered_with_confidence_over_threshold"] = float(
            (out["probabilities"].max(axis=1) >= meta.low_confidence).mean()
        )
        result[half] = entry
    return result


class _StageTimes:
    """Seconds per named stage of an evaluation, in the order they ran (metrics.json `timings_s`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.seconds.items()}


@dataclass
class _Loaded:
    """The model under test (its SavedModel, metadata and `serving_default`) and the test split, encoded."""

    saved_model: Path
    meta: model_metadata.ModelMetadata
    train_info: dict
    loaded: object
    serve: object
    encoded: list[bytes]
    y_true: np.ndarray

    def run(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """serving_default over encoded images, in batches: the outputs evaluation reads."""
        import tensorflow as tf

        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), 32):
            result = self.serve(images=tf.constant(images[i : i + 32]))
            for key in TRUST_OUTPUTS:
                if key in result:
                    parts.setdefault(key, []).append(result[key].numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}


def _load(split_dir: Path, model_dir: Path, out_dir: Path) -> _Loaded:
    import tensorflow as tf

    saved_model = find_saved_model(model_dir)
    train_input.split_shards(split_dir, "test")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = model_metadata.read(saved_model)
    train_info = {}
    if (saved_model.parent / "train.json").is_file():
        train_info = json.loads((saved_model.parent / "train.json").read_text())
    loaded = tf.saved_model.load(str(saved_model))
    examples = list(records.iter_examples(split_dir / "test"))
    return _Loaded(
        saved_model=saved_model,
        meta=meta,
        train_info=train_info,
        loaded=loaded,
        serve=loaded.signatures["serving_default"],
        encoded=[e["encoded"] for e in examples],
        y_true=np.array([e["label"] for e in examples], dtype=np.int64),
    )


# The documented schema's order: the intervals beside their point estimates.
_CLASSIFICATION_KEYS = (
    "model",
    "accuracy",
    "accuracy_ci",
    "macro_f1",
    "macro_f1_ci",
    "weighted_f1",
    "per_class",
    "confusion_matrix",
    "class_names",
)


def _classification(model: _Loaded, clean: dict[str, np.ndarray], bootstrap: int, seed: int) -> dict:
    """Accuracy, F1 and the confusion matrix with bootstrap intervals; the model's parameters and size."""
    from components.train.export import dir_size

    y_pred = clean["probabilities"].argmax(axis=1)
    metrics = {"model": model.meta.model}
    metrics.update(classification_metrics(model.y_true, y_pred))
    metrics.update(bootstrap_ci(model.y_true, y_pred, bootstrap, seed))
    metrics = {k: metrics[k] for k in _CLASSIFICATION_KEYS}
    variables = getattr(model.loaded, "variables", [])
    metrics["params"] = int(model.train_info.get("params") or sum(int(np.prod(v.shape)) for v in variables))
    # What TF Serving loads (graph, variables, warmup); the Keras copy for Grad-CAM is reported apart.
    keras_copy = model.saved_model / "assets.extra" / "model.keras"
    keras_bytes = keras_copy.stat().st_size if keras_copy.is_file() else 0
    metrics["size_bytes"] = dir_size(model.saved_model) - keras_bytes
    metrics["keras_copy_bytes"] = keras_bytes
    return metrics


def _trust(model: _Loaded, clean: dict[str, np.ndarray]) -> dict:
    """Referral and calibration figures, for a calibrated export (components/train/calibration.py); else none."""
    from components.evaluate import trust

    if "refer" not in clean:
        return {}
    probs, y_true, meta = clean["probabilities"], model.y_true, model.meta
    before = trust.uncalibrated(probs, meta.temperature or 1.0)
    return {
        "referral": trust.referral_summary(
            probs, y_true, clean["refer"], clean["in_distribution"], clean["prediction_set"], meta.conformal_coverage
        ),
        "calibration": {
            "temperature": meta.temperature,
            "bins": calibration.ECE_BINS,
            "ece_before": calibration.expected_calibration_error(before, y_true),
            "ece_after": calibration.expected_calibration_error(probs, y_true),
            "reliability_before": calibration.reliability(before, y_true),
            "reliability_after": calibration.reliability(probs, y_true),
        },
    }


def _robustness(model: _Loaded, clean_accuracy: float, rgb: list[np.ndarray]) -> tuple[dict, dict[str, list[bytes]]]:
    """Accuracy (and referral, missed malignancy) on every perturbed copy of the test images; the worst plausible
    one gates."""
    from components.evaluate.right_reason import answered_figures
    from components.evaluate.robustness import PERTURBATIONS, perturbed_sets, plausible

    perturbed: dict[str, list[bytes]] = {}
    accuracy, referred, missed = {}, {}, {}
    for name, images in perturbed_sets(rgb, PERTURBATIONS):
        perturbed[name] = images
        out = model.run(images)
        figures = answered_figures(out, model.y_true)
        accuracy[name] = figures["accuracy"]
        missed[name] = figures["missed_malignancy"]
        if "refer" in out:
            referred[name] = figures["referred"]
    metrics: dict = {"robustness": accuracy, "robustness_missed_malignancy": missed}
    gated = {k: v for k, v in accuracy.items() if k in plausible()}
    metrics["robustness_worst_name"] = min(gated, key=gated.get)
    metrics["robustness_worst"] = gated[metrics["robustness_worst_name"]]
    metrics["robustness_clean"] = clean_accuracy
    if referred:
        metrics["robustness_referred"] = referred
    return metrics, perturbed


def _malignancy(model: _Loaded, clean: dict[str, np.ndarray]) -> dict:
    """Missed malignancy and malignancy sensitivity on the clean test images; Benign recall with its interval,
    on this test split and out of fold (the cross-validation named in settings)."""
    from components.evaluate import malignancy, right_reason
    from components.home import REPO_ROOT

    y_pred = clean["probabilities"].argmax(axis=1)
    return {
        "missed_malignancy": malignancy.missed_malignancy(model.y_true, y_pred, clean.get("refer")),
        "benign_recall": malignancy.benign_recall(model.y_true, y_pred),
        "benign_recall_out_of_fold": right_reason.out_of_fold_benign_recall(
            REPO_ROOT / settings.CROSS_VALIDATION_RESULTS
        ),
    }


def _worst_missed(metrics: dict) -> dict:
    """The largest missed-malignancy share among the plausible perturbations and the magnifications."""
    from components.evaluate.right_reason import worst_missed
    from components.evaluate.robustness import plausible

    shares = dict(metrics.get("robustness_missed_malignancy") or {})
    shares.update({name: m["missed_malignancy"] for name, m in (metrics.get("magnification") or {}).items()})
    names = [n for n in shares if n in plausible(list(shares)) and n not in settings.GATE_ROBUSTNESS_EXCLUDED]
    name, share = worst_missed(shares, names)
    return {"name": name, "missed_share": share, "missed": shares[name]["missed"] if name else None}


def run_evaluate(
    split_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = settings.SEED,
    latency_runs: int = 50,
    shortcut: bool = True,
    robust: bool = True,
    probes: bool = True,
    external_dir: str | Path | None = None,
) -> dict:
    """Evaluate the exported model in `model_dir` on split_dir/test; writes out_dir/metrics.json and confusion_matrix.png.

    Stages (each timed into `timings_s`): load, predict (clean test images), latency, trust (referral and
    calibration, missed malignancy), robustness (perturbed copies), magnification (x0.6-x2), probes (leukocytes
    removed, context swapped, Grad-CAM attention), shortcut (the non-CNN baseline), external (another lab).
    """
    started = time.perf_counter()
    split_dir, model_dir, out_dir = Path(split_dir), Path(model_dir), Path(out_dir)
    times = _StageTimes()
    model = _load(split_dir, model_dir, out_dir)
    times.seconds["load"] = time.perf_counter() - started
    with times.stage("predict"):
        clean = model.run(model.encoded)
        metrics = _classification(model, clean, bootstrap, seed)
    with times.stage("latency"):
        metrics.update(latency(model.serve, model.encoded, runs=latency_runs))
    with times.stage("trust"):
        metrics.update(_trust(model, clean))
        metrics.update(_malignancy(model, clean))
    perturbed: dict[str, list[bytes]] = {}
    rgb = [domain.load_rgb(e) for e in model.encoded] if robust or probes else []
    with times.stage("robustness"):
        if robust:
            robustness, perturbed = _robustness(model, metrics["accuracy"], rgb)
            metrics.update(robustness)
    with times.stage("magnification"):
        if robust:
            from components.evaluate import right_reason

            metrics["magnification"] = right_reason.magnification(model.run, rgb, model.y_true)
            metrics["missed_malignancy_worst"] = _worst_missed(metrics)
    with times.stage("probes"):
        if probes:
            from components.evaluate.probes import run_probes

            keras_copy = model.saved_model / "assets.extra" / "model.keras"
            metrics["probes"] = run_probes(model.run, rgb, model.y_true, keras_copy if keras_copy.is_file() else None)
    with times.stage("shortcut"):
        if shortcut:
            from components.evaluate.shortcut import shortcut_on_split

            metrics["shortcut_baseline"] = shortcut_on_split(
                split_dir, seed, perturbed=perturbed or None, labels=model.y_true
            )
    with times.stage("external"):
        if external_dir:
            metrics["external"] = _external(
                model.run, external_dir, clean, model.encoded, model.saved_model, model.meta
            )
    metrics["timings_s"] = times.rounded()
    metrics["saved_model"] = str(model.saved_model.resolve())
    metrics["test_images"] = int(len(model.y_true))
    metrics["image_size"] = model.meta.image_size
    metrics["weights_used"] = model.train_info.get("weights_used")
    metrics["train_wall_time_s"] = model.train_info.get("wall_time_s")
    metrics["bootstrap_resamples"] = bootstrap
    metrics["eval_wall_time_s"] = round(time.perf_counter() - started, 2)

    save_confusion_png(
        metrics["confusion_matrix"],
        out_dir / "confusion_matrix.png",
        f"{metrics['model']}: accuracy {metrics['accuracy']:.3f}",
    )
    atomic_files.write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    log.info(
        "%s: test accuracy %.4f, macro-F1 %.4f (%d images) in %.1fs",
        metrics["model"],
        metrics["accuracy"],
        metrics["macro_f1"],
        len(model.y_true),
        metrics["eval_wall_time_s"],
    )
    return metrics
