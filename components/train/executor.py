"""run_train: one model from one config on the split step's shards, then the serving export.

The stages, in order: `_runtime` (devices, precision, distribution), `_class_balance`, `_train_phase`
(end to end, or on cached activations: components/train/cached.py), `_fine_tune_phase`, `_validate`,
`_fit_calibration`, `_export`, `_summary`. The Keras steps they share live in components/train/fitting.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components import atomic_files, domain, records, settings
from components.settings import ModelConfig
from components.train import cached, fitting, models
from components.train import input as train_input

log = logging.getLogger(__name__)
WARMUP_IMAGES = 4


def class_weights(train_labels: np.ndarray, benign_factor: float = 1.0) -> dict[int, float]:
    """'balanced' weights from the training counts (scikit-learn), Benign's times `benign_factor`; absent classes 1.0."""
    from sklearn.utils.class_weight import compute_class_weight

    if not benign_factor > 0:
        raise ValueError(f"benign_factor must be positive, got {benign_factor!r}")
    present = np.unique(train_labels)
    weights = compute_class_weight("balanced", classes=present, y=train_labels)
    out = {i: 1.0 for i in range(domain.NUM_CLASSES)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    out[domain.class_index("Benign")] *= benign_factor
    return out


def _fit_calibration(model, config: ModelConfig, split_dir: Path, ood_train: tuple[np.ndarray, np.ndarray] | None):
    """Temperature, OOD score and conformal quantile for the trained model (components/train/calibration.py)."""
    from components.train import calibration

    features = models.calibration_features_model(model)
    batch = max(config.batch_size, 64)
    if ood_train is None:  # trained end to end: the clean training images and one augmented copy
        (_, mid), y = fitting.predict_arrays(
            features, train_input.dataset(split_dir, "train", config.image_size, batch, cache=False)
        )
        (_, mid_aug), y_aug = fitting.predict_arrays(
            features,
            train_input.dataset(
                split_dir,
                "train",
                config.image_size,
                batch,
                augment=config.augment,
                seed=config.seed + 7,
                cache=False,
                overexposure=config.overexposure,
            ),
        )
        ood_train = (np.concatenate([mid, mid_aug]), np.concatenate([y, y_aug]))
    (val_head, val_mid), val_y = fitting.predict_arrays(
        features, train_input.dataset(split_dir, "val", config.image_size, batch, cache=False)
    )
    kernel, bias = model.get_layer(models.OUTPUT_LAYER).get_weights()
    return calibration.fit_calibration(
        ood_train[0],
        ood_train[1],
        val_head,
        val_mid,
        val_y,
        kernel,
        bias,
        num_classes=domain.NUM_CLASSES,
        ood_referral_rate=settings.OOD_VAL_REFERRAL_RATE,
        coverage=settings.CONFORMAL_COVERAGE,
    )


def _save_curves(history: dict, path: Path, fine_tune_start: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        epochs = range(1, len(history.get(key, [])) + 1)
        ax.plot(epochs, history.get(key, []), label=f"train {key}")
        ax.plot(epochs, history.get(f"val_{key}", []), label=f"val {key}")
        if fine_tune_start:
            ax.axvline(fine_tune_start + 0.5, color="grey", linestyle="--", label="fine-tuning")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    try:
        atomic_files.replace_file(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


@dataclass
class _Runtime:
    """Where training runs: the GPUs seen, whether it computes in mixed precision, the distribution strategy."""

    gpus: list[str]
    mixed: bool
    strategy: object
    replicas: int
    batch: int  # the global batch: the config's per replica times the replicas


def _runtime(config: ModelConfig) -> _Runtime:
    """Pick devices and precision (mixed float16 on GPUs when the config asks), and the matching strategy."""
    import keras
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    mixed = bool(gpus) and config.mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    return _Runtime(gpus, mixed, strategy, replicas, config.batch_size * replicas)


@dataclass
class _ClassBalance:
    labels: np.ndarray  # the training labels, shard order
    weights: dict[int, float]
    counts: dict[str, int]


def _class_balance(split_dir: Path, config: ModelConfig) -> _ClassBalance:
    labels = train_input.labels(split_dir, "train")
    weights = class_weights(labels, config.benign_weight)
    counts = {domain.CLASS_NAMES[i]: int((labels == i).sum()) for i in range(domain.NUM_CLASSES)}
    return _ClassBalance(labels, weights, counts)


@dataclass
class _Trained:
    """What the training stages leave: the model, its per-epoch history and the phase of each epoch."""

    model: object
    history: dict = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    fine_tune_start: int | None = None
    ood_train: tuple[np.ndarray, np.ndarray] | None = None  # pooled mid-level features and labels, when cached


def _training_batches(split_dir: Path, config: ModelConfig, batch: int, seed: int, count: int):
    return fitting.one_hot(
        train_input.dataset(
            split_dir,
            "train",
            config.image_size,
            batch,
            training=True,
            augment=config.augment,
            seed=seed,
            count=count,
            overexposure=config.overexposure,
        )
    )


def _train_phase(
    trained: _Trained,
    config: ModelConfig,
    split_dir: Path,
    out_dir: Path,
    balance: _ClassBalance,
    batch: int,
    val_ds,
    bn_batches,
    verbose: int,
) -> None:
    """The first phase: the top on cached activations (a pretrained base with `cache_features`), else end to end."""
    model = trained.model
    has_base = models.base_layer(model) is not None
    if config.cache_features and has_base:
        trained.history, trained.ood_train = cached.train_on_cached_activations(
            model, config, split_dir, balance.weights, out_dir / "checkpoints" / "top.weights.h5", verbose
        )
        trained.phases += ["cached_activations"] * len(trained.history.get("loss", []))
        return
    train_ds = _training_batches(split_dir, config, batch, config.seed, len(balance.labels))
    fitting.compile_model(
        model,
        fitting.learning_rate(config, train_input.steps_per_epoch(len(balance.labels), batch)),
        config.label_smoothing,
    )
    trained.history = fitting.fit(
        model,
        train_ds,
        val_ds,
        epochs=config.epochs,
        initial_epoch=0,
        config=config,
        weights=balance.weights,
        checkpoint=out_dir / "checkpoints" / "best.weights.h5",
        verbose=verbose,
        bn_batches=bn_batches,
    )
    frozen = has_base and not models.base_layer(model).trainable
    trained.phases += ["frozen_base" if frozen else "train"] * len(trained.history.get("loss", []))


def _fine_tune_phase(
    trained: _Trained,
    config: ModelConfig,
    split_dir: Path,
    out_dir: Path,
    balance: _ClassBalance,
    batch: int,
    val_ds,
    verbose: int,
) -> None:
    """Unfreeze the top `fine_tune_layers` of a pretrained base and train on at `fine_tune_learning_rate`."""
    model = trained.model
    if models.base_layer(model) is None or config.fine_tune_epochs <= 0 or config.fine_tune_layers <= 0:
        return
    trained.fine_tune_start = start = len(trained.phases)
    unfrozen = models.set_fine_tune(model, config.fine_tune_layers)
    log.info(
        "fine-tuning the top %d layers of the base (%d with weights) at lr %g",
        config.fine_tune_layers,
        unfrozen,
        config.fine_tune_learning_rate,
    )
    train_ds = _training_batches(split_dir, config, batch, config.seed + 1, len(balance.labels))
    fitting.compile_model(model, config.fine_tune_learning_rate, config.label_smoothing)
    extra = fitting.fit(
        model,
        train_ds,
        val_ds,
        epochs=start + config.fine_tune_epochs,
        initial_epoch=start,
        config=config,
        weights=balance.weights,
        checkpoint=out_dir / "checkpoints" / "best.weights.h5",
        verbose=verbose,
    )
    fitting.merge_histories(trained.history, extra)
    trained.phases += ["fine_tune"] * len(extra.get("loss", []))


def _validate(model, config: ModelConfig, val_ds) -> tuple[float, float]:
    """(val loss, val accuracy) of the kept weights."""
    if getattr(model, "optimizer", None) is None:
        fitting.compile_model(model, config.learning_rate, config.label_smoothing)
    with contextlib.redirect_stdout(sys.stderr):
        val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
    return float(val_loss), float(val_accuracy)


def _log_calibration(config: ModelConfig, fitted, seconds: float) -> None:
    log.info(
        "%s calibration in %.1fs: temperature %.3f%s, val ECE %.4f -> %.4f, OOD threshold %.2f, conformal quantile %.4f",
        config.name,
        seconds,
        fitted.temperature,
        ""
        if fitted.fitted_on["temperature_kept"]
        else f" (the fitted {fitted.fitted_on['fitted_temperature']:.3f} raised the val ECE)",
        fitted.fitted_on["val_ece_before"],
        fitted.fitted_on["val_ece_after"],
        fitted.ood_threshold,
        fitted.conformal_quantile,
    )


def _export(model, config: ModelConfig, split_dir: Path, out_dir: Path, fitted, export_saved_model: bool):
    """keras/model.keras always; saved_model/ (with warmup images and the calibration) when asked."""
    from components.train import export

    keras_path = out_dir / "keras" / "model.keras"
    keras_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_files.replace_file(keras_path, model.save)  # the temp name keeps .keras, which model.save requires
    if not export_saved_model:  # always in the CLI and pipeline; tests of training alone skip the slow tracing
        return keras_path, None
    warmup = [ex["encoded"] for _, ex in zip(range(WARMUP_IMAGES), records.iter_examples(split_dir / "val"))]
    saved_model = export.export_saved_model(
        model,
        out_dir / "saved_model",
        model_name=config.name,
        image_size=config.image_size,
        brightness=config.brightness,
        warmup_images=warmup,
        keras_path=keras_path,
        calibration=fitted,
    ).resolve()
    return keras_path, saved_model


def _summary(
    config: ModelConfig,
    trained: _Trained,
    weights_used,
    validation: tuple[float, float],
    balance: _ClassBalance,
    runtime: _Runtime,
    fitted,
    paths: tuple[Path, Path | None, Path],
    times: dict[str, float],
) -> dict:
    """train.json: the config, the model's size, the run's figures, where its outputs are, the calibration."""
    model, history = trained.model, trained.history
    keras_path, saved_model, out_dir = paths
    val_loss, val_accuracy = validation
    return {
        "model": config.name,
        "config": config.to_dict(),
        "weights_used": weights_used,
        "params": int(model.count_params()),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "epochs_run": len(trained.phases),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None,
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "train_images": int(len(balance.labels)),
        "train_counts": balance.counts,
        "class_weights": {domain.CLASS_NAMES[i]: w for i, w in balance.weights.items()},
        "devices": runtime.gpus or ["cpu"],
        "mixed_precision": runtime.mixed,
        "replicas": runtime.replicas,
        "train_time_s": round(times["train"], 2),
        "export_time_s": round(times["export"], 2),
        "wall_time_s": round(times["wall"], 2),
        "keras_model": str(keras_path.resolve()),
        "saved_model": str(saved_model) if saved_model else None,
        "out_dir": str(out_dir.resolve()),
        "calibration": {
            "temperature": fitted.temperature,
            "ood_threshold": fitted.ood_threshold,
            "conformal_quantile": fitted.conformal_quantile,
            "coverage": fitted.coverage,
            "ood_val_referral_rate": fitted.ood_referral_rate,
            "ood_layer": models.OOD_SOURCE_LAYERS[config.name],
            **fitted.fitted_on,
        },
    }


def run_train(
    split_dir: str | Path,
    out_dir: str | Path,
    config: ModelConfig,
    verbose: int | None = None,
    export_saved_model: bool = True,
) -> dict:
    """Train `config.name` on split_dir/{train,val}; write keras/model.keras, saved_model/, history, curves, train.json."""
    import keras

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    for split in ("train", "val"):
        train_input.split_shards(split_dir, split)  # clear error before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    verbose = verbose if verbose is not None else (1 if sys.stderr.isatty() else 2)

    runtime = _runtime(config)
    balance = _class_balance(split_dir, config)
    log.info(
        "training %s on %d images %s, class weights %s, devices %s",
        config.name,
        len(balance.labels),
        balance.counts,
        balance.weights,
        runtime.gpus or ["cpu"],
    )
    batch = runtime.batch
    try:
        with runtime.strategy.scope():
            trained = _Trained(models.build_model(config))
            weights_used = trained.model.weights_used
            val_count = len(train_input.labels(split_dir, "val"))
            val_ds = fitting.one_hot(train_input.dataset(split_dir, "val", config.image_size, batch, count=val_count))
            # Exact BatchNorm statistics before each validation, over training batches augmented as the weights
            # see them. With the statistics of clean images the quick CNN's worst plausible perturbation on val was
            # 83-88%; with these, 89-92% (experiments/results/cnn_robustness.md).
            bn_batches = train_input.dataset(
                split_dir,
                "train",
                config.image_size,
                batch,
                training=True,
                augment=config.augment,
                seed=config.seed,
                cache=False,
                overexposure=config.overexposure,
            ).take(fitting.PRECISE_BN_BATCHES)
            _train_phase(trained, config, split_dir, out_dir, balance, batch, val_ds, bn_batches, verbose)
            _fine_tune_phase(trained, config, split_dir, out_dir, balance, batch, val_ds, verbose)
            validation = _validate(trained.model, config, val_ds)
            calibration_started = time.perf_counter()
            fitted = _fit_calibration(trained.model, config, split_dir, trained.ood_train)
            _log_calibration(config, fitted, time.perf_counter() - calibration_started)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    train_time = time.perf_counter() - started

    export_started = time.perf_counter()
    keras_path, saved_model = _export(trained.model, config, split_dir, out_dir, fitted, export_saved_model)
    export_time = time.perf_counter() - export_started

    trained.history["phase"] = trained.phases
    atomic_files.write_text(out_dir / "history.json", json.dumps(trained.history, indent=1))
    _save_curves(trained.history, out_dir / "curves.png", trained.fine_tune_start)
    times = {"train": train_time, "export": export_time, "wall": time.perf_counter() - started}
    result = _summary(
        config,
        trained,
        weights_used,
        validation,
        balance,
        runtime,
        fitted,
        (keras_path, saved_model, out_dir),
        times,
    )
    atomic_files.write_text(out_dir / "train.json", json.dumps(result, indent=2))
    log.info(
        "%s: val accuracy %.4f after %d epochs in %.1fs (weights: %s)",
        config.name,
        validation[1],
        len(trained.phases),
        result["wall_time_s"],
        weights_used,
    )
    return result
