"""run_train: one model from one config on the split step's shards, then the serving export."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from components import atomic_files, domain, records, settings
from components.settings import ModelConfig
from components.train import input as train_input
from components.train import models

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


def _devices() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


def _one_hot(ds):
    import tensorflow as tf

    return ds.map(lambda x, y: (x, tf.one_hot(y, domain.NUM_CLASSES)), num_parallel_calls=tf.data.AUTOTUNE)


def _compile(model, learning_rate, label_smoothing: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def _learning_rate(config: ModelConfig, steps_per_epoch: int):
    """The phase-1 rate: constant, or with `cosine_decay` falling along a cosine to 5% over `config.epochs`."""
    if not config.cosine_decay:
        return config.learning_rate
    import keras

    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.05
    )


PRECISE_BN_BATCHES = 25


def recompute_batchnorm(model, batches) -> int:
    """Set trainable BatchNorm layers' moving statistics to the exact average over `batches` ("precise BN").

    On this data the exponential moving averages lag the weights enough that validation accuracy
    swings by 30 points between epochs while training accuracy is flat; exact statistics over the
    batches the weights were trained on (augmented, when training augments) remove that train/inference
    mismatch. Returns the batches used.
    """
    import keras

    layers = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, (x, _) in enumerate(batches, start=1):
            for layer in layers:  # cumulative mean: new = old * (k-1)/k + batch / k
                layer.momentum = (count - 1) / count
            model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return count


def _precise_bn_callback(batches):
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        """Before each validation pass, recompute BatchNorm statistics (see recompute_batchnorm)."""

        def on_test_begin(self, logs=None):
            recompute_batchnorm(self.model, batches)

    return PreciseBatchNorm()


def _callbacks(config: ModelConfig, checkpoint: Path, bn_batches=None) -> list:
    import keras

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    callbacks = [_precise_bn_callback(bn_batches)] if bn_batches is not None else []
    return callbacks + [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
    ]


def _fit(
    model,
    train,
    val,
    *,
    epochs: int,
    initial_epoch: int,
    config: ModelConfig,
    weights: dict,
    checkpoint: Path,
    verbose: int,
    bn_batches=None,
) -> dict:
    # Keras writes its progress to stdout; stdout belongs to `--json`, so send it to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        history = model.fit(
            train,
            validation_data=val,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=weights,
            callbacks=_callbacks(config, checkpoint, bn_batches),
            verbose=verbose,
        )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _predict_arrays(extractor, ds) -> tuple[list[np.ndarray], np.ndarray]:
    """Run a multi-output `extractor` over (x, y) batches: ([outputs...], labels)."""
    outs: list[list[np.ndarray]] = []
    labels = []
    for x, y in ds:
        result = extractor.predict_on_batch(x)
        result = result if isinstance(result, (list, tuple)) else [result]
        outs.append([np.asarray(r) for r in result])
        labels.append(y.numpy())
    return [np.concatenate(parts) for parts in zip(*outs)], np.concatenate(labels)


def _bottom_and_top(model, config: ModelConfig):
    """(bottom: pixels -> [pooled mid-level map, activation at the cut], top: cut activation -> probabilities).

    The cut is `config.cache_cut`, a layer inside the base: everything below it stays frozen and runs
    once per cached copy; the layers above it (and the head) train on the cached activations. With no
    cut the activation is the pooled last feature map and the top is the head alone. Both models share
    their layers with `model`, so training the top trains the model itself. They see one view of each
    image (the `views` layer sits above `normalize`); the full model averages its views (models.py).
    """
    import keras

    base = models.base_layer(model)
    inner_mid, inner_final = base.outputs
    inner_cut = base.get_layer(config.cache_cut).output if config.cache_cut else inner_final
    inner_bottom = keras.Model(base.input, [inner_mid, inner_cut])
    mid, cut = inner_bottom(model.get_layer("normalize").output)
    pooled_mid = keras.layers.GlobalAveragePooling2D(name="ood_gap")(mid)
    if config.cache_cut is None:
        cut = model.get_layer("gap")(cut)
    bottom = keras.Model(model.input, [pooled_mid, cut])
    inputs = keras.Input(cut.shape[1:], name="cached")
    x = inputs
    if config.cache_cut is not None:
        top_of_base = keras.Model(inner_cut, inner_final)
        base.trainable = True
        for layer in base.layers:  # BatchNorm stays frozen (and in inference mode) when fine-tuning
            layer.trainable = layer in top_of_base.layers and not isinstance(layer, keras.layers.BatchNormalization)
        x = model.get_layer("gap")(top_of_base(x, training=False))
    x = model.get_layer("dropout")(x)
    top = keras.Model(inputs, model.get_layer(models.OUTPUT_LAYER)(x))
    return bottom, top


def _train_on_cached_activations(
    model, config: ModelConfig, split_dir: Path, weights: dict, checkpoint: Path, verbose: int
) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Frozen bottom of the base: cache its activations once per copy, train the rest on them.

    With `augment`, the training set is the clean images plus `augment_copies` augmented copies of
    each (every copy a new random lab and geometry), so what trains learns what survives a change
    of stain, lamp and camera at the cost of one bottom pass per copy. Returns the history and the
    pooled mid-level features of every cached training copy (the OOD score is fitted on them).
    """
    import tensorflow as tf

    bottom, top = _bottom_and_top(model, config)
    started = time.perf_counter()
    batch = max(config.batch_size, 64)
    (train_mid, train_x), train_y = _predict_arrays(
        bottom, train_input.dataset(split_dir, "train", config.image_size, batch, cache=False)
    )
    (_, val_x), val_y = _predict_arrays(
        bottom, train_input.dataset(split_dir, "val", config.image_size, batch, cache=False)
    )
    mids, xs, ys = [train_mid], [train_x.astype(np.float16)], [train_y]
    copies = config.augment_copies if config.augment else 0
    if copies:
        augmented = train_input.dataset(
            split_dir,
            "train",
            config.image_size,
            batch,
            augment=True,
            seed=config.seed,
            cache=True,
            overexposure=config.overexposure,
        )
        for _ in range(copies):
            (mid, x), y = _predict_arrays(bottom, augmented)
            mids.append(mid)
            xs.append(x.astype(np.float16))  # half the memory; the top computes in float32
            ys.append(y)
    train_x, train_y = np.concatenate(xs), np.concatenate(ys)
    log.info(
        "cached %s activations at %s for %d training copies (%d augmented) and val in %.1fs",
        config.name,
        config.cache_cut or "the pooled features",
        len(train_x),
        copies,
        time.perf_counter() - started,
    )

    # Pooled features of a random-init base span decades: standardise them for the head, then fold
    # the standardisation into the Dense layer so the full model is unchanged.
    standardise = config.cache_cut is None
    mean = train_x.astype(np.float32).mean(axis=0) if standardise else 0.0
    std = train_x.astype(np.float32).std(axis=0) + 1e-6 if standardise else 1.0

    def as_ds(x, y, shuffle: bool):
        ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, domain.NUM_CLASSES)))
        if shuffle:
            ds = ds.shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
        ds = ds.batch(config.batch_size)
        return ds.map(lambda a, b: ((tf.cast(a, tf.float32) - mean) / std, b)).prefetch(tf.data.AUTOTUNE)

    # A constant rate left the validation loss jumping epoch to epoch (0.044 -> 0.173 -> 0.057).
    _compile(
        top,
        _learning_rate(config, train_input.steps_per_epoch(len(train_x), config.batch_size)),
        config.label_smoothing,
    )
    history = _fit(
        top,
        as_ds(train_x, train_y, True),
        as_ds(val_x, val_y, False),
        epochs=config.epochs,
        initial_epoch=0,
        config=config,
        weights=weights,
        checkpoint=checkpoint,
        verbose=verbose,
    )
    if standardise:
        dense = model.get_layer(models.OUTPUT_LAYER)
        kernel, bias = dense.get_weights()
        dense.set_weights(
            [(kernel / std[:, None]).astype(np.float32), (bias - (mean / std) @ kernel).astype(np.float32)]
        )
    return history, (np.concatenate(mids), np.concatenate(ys))


def _fit_calibration(model, config: ModelConfig, split_dir: Path, ood_train: tuple[np.ndarray, np.ndarray] | None):
    """Temperature, OOD score and conformal quantile for the trained model (components/train/calibration.py)."""
    from components.train import calibration

    features = models.calibration_features_model(model)
    batch = max(config.batch_size, 64)
    if ood_train is None:  # trained end to end: the clean training images and one augmented copy
        (_, mid), y = _predict_arrays(
            features, train_input.dataset(split_dir, "train", config.image_size, batch, cache=False)
        )
        (_, mid_aug), y_aug = _predict_arrays(
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
    (val_head, val_mid), val_y = _predict_arrays(
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


def _merge(history: dict, extra: dict) -> dict:
    for key, values in extra.items():
        history.setdefault(key, []).extend(values)
    return history


def run_train(
    split_dir: str | Path,
    out_dir: str | Path,
    config: ModelConfig,
    verbose: int | None = None,
    export_saved_model: bool = True,
) -> dict:
    """Train `config.name` on split_dir/{train,val}; write keras/model.keras, saved_model/, history, curves, train.json."""
    import keras
    import tensorflow as tf

    from components.train import export

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    for split in ("train", "val"):
        train_input.split_shards(split_dir, split)  # clear error before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    verbose = verbose if verbose is not None else (1 if sys.stderr.isatty() else 2)

    gpus = _devices()
    mixed = bool(gpus) and config.mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    batch = config.batch_size * replicas

    train_labels = train_input.labels(split_dir, "train")
    weights = class_weights(train_labels, config.benign_weight)
    counts = {domain.CLASS_NAMES[i]: int((train_labels == i).sum()) for i in range(domain.NUM_CLASSES)}
    log.info(
        "training %s on %d images %s, class weights %s, devices %s",
        config.name,
        len(train_labels),
        counts,
        weights,
        gpus or ["cpu"],
    )

    try:
        with strategy.scope():
            model = models.build_model(config)
            weights_used = model.weights_used
            has_base = models.base_layer(model) is not None
            checkpoint = out_dir / "checkpoints" / "best.weights.h5"
            val_count = len(train_input.labels(split_dir, "val"))
            val_ds = _one_hot(train_input.dataset(split_dir, "val", config.image_size, batch, count=val_count))
            history: dict = {}
            # Exact BatchNorm statistics before each validation, over training batches augmented as the weights
            # see them. With the statistics of clean images the quick CNN's worst plausible perturbation on val was
            # 83-88%; with these, 89-92% (benchmarks/results/cnn_robustness.md).
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
            ).take(PRECISE_BN_BATCHES)
            phases: list[str] = []
            ood_train = None
            if config.cache_features and has_base:
                history, ood_train = _train_on_cached_activations(
                    model, config, split_dir, weights, out_dir / "checkpoints" / "top.weights.h5", verbose
                )
                phases += ["cached_activations"] * len(history.get("loss", []))
            else:
                train_ds = _one_hot(
                    train_input.dataset(
                        split_dir,
                        "train",
                        config.image_size,
                        batch,
                        training=True,
                        augment=config.augment,
                        seed=config.seed,
                        count=len(train_labels),
                        overexposure=config.overexposure,
                    )
                )
                _compile(
                    model,
                    _learning_rate(config, train_input.steps_per_epoch(len(train_labels), batch)),
                    config.label_smoothing,
                )
                history = _fit(
                    model,
                    train_ds,
                    val_ds,
                    epochs=config.epochs,
                    initial_epoch=0,
                    config=config,
                    weights=weights,
                    checkpoint=checkpoint,
                    verbose=verbose,
                    bn_batches=bn_batches,
                )
                frozen = has_base and not models.base_layer(model).trainable
                phases += ["frozen_base" if frozen else "train"] * len(history.get("loss", []))
            fine_tune_start = None
            if has_base and config.fine_tune_epochs > 0 and config.fine_tune_layers > 0:
                fine_tune_start = len(phases)
                unfrozen = models.set_fine_tune(model, config.fine_tune_layers)
                log.info(
                    "fine-tuning the top %d layers of the base (%d with weights) at lr %g",
                    config.fine_tune_layers,
                    unfrozen,
                    config.fine_tune_learning_rate,
                )
                train_ds = _one_hot(
                    train_input.dataset(
                        split_dir,
                        "train",
                        config.image_size,
                        batch,
                        training=True,
                        augment=config.augment,
                        seed=config.seed + 1,
                        count=len(train_labels),
                        overexposure=config.overexposure,
                    )
                )
                _compile(model, config.fine_tune_learning_rate, config.label_smoothing)
                extra = _fit(
                    model,
                    train_ds,
                    val_ds,
                    epochs=fine_tune_start + config.fine_tune_epochs,
                    initial_epoch=fine_tune_start,
                    config=config,
                    weights=weights,
                    checkpoint=checkpoint,
                    verbose=verbose,
                )
                _merge(history, extra)
                phases += ["fine_tune"] * len(extra.get("loss", []))
            if getattr(model, "optimizer", None) is None:
                _compile(model, config.learning_rate, config.label_smoothing)
            with contextlib.redirect_stdout(sys.stderr):
                val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
            calibration_started = time.perf_counter()
            fitted = _fit_calibration(model, config, split_dir, ood_train)
            log.info(
                "%s calibration in %.1fs: temperature %.3f%s, val ECE %.4f -> %.4f, OOD threshold %.2f, "
                "conformal quantile %.4f",
                config.name,
                time.perf_counter() - calibration_started,
                fitted.temperature,
                ""
                if fitted.fitted_on["temperature_kept"]
                else f" (the fitted {fitted.fitted_on['fitted_temperature']:.3f} raised the val ECE)",
                fitted.fitted_on["val_ece_before"],
                fitted.fitted_on["val_ece_after"],
                fitted.ood_threshold,
                fitted.conformal_quantile,
            )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    train_time = time.perf_counter() - started
    export_started = time.perf_counter()

    keras_path = out_dir / "keras" / "model.keras"
    keras_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_files.replace_file(keras_path, model.save)  # the temp name keeps .keras, which model.save requires

    saved_model = None
    if export_saved_model:  # always in the CLI and pipeline; tests of training alone skip the slow tracing
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

    export_time = time.perf_counter() - export_started
    history["phase"] = phases
    atomic_files.write_text(out_dir / "history.json", json.dumps(history, indent=1))
    _save_curves(history, out_dir / "curves.png", fine_tune_start)
    result = {
        "model": config.name,
        "config": config.to_dict(),
        "weights_used": weights_used,
        "params": int(model.count_params()),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "epochs_run": len(phases),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None,
        "val_accuracy": float(val_accuracy),
        "val_loss": float(val_loss),
        "train_images": int(len(train_labels)),
        "train_counts": counts,
        "class_weights": {domain.CLASS_NAMES[i]: w for i, w in weights.items()},
        "devices": gpus or ["cpu"],
        "mixed_precision": mixed,
        "replicas": replicas,
        "train_time_s": round(train_time, 2),
        "export_time_s": round(export_time, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
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
    atomic_files.write_text(out_dir / "train.json", json.dumps(result, indent=2))
    log.info(
        "%s: val accuracy %.4f after %d epochs in %.1fs (weights: %s)",
        config.name,
        val_accuracy,
        len(phases),
        result["wall_time_s"],
        weights_used,
    )
    return result
