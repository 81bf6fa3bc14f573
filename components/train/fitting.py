"""Keras fitting steps shared by the trainer's two paths (end to end, cached activations) and by experiments.

Public on purpose: the one-off experiments build their variants from these same steps, so a change here
reaches them through the names below rather than through private reach-ins. Callers look them up on
this module at call time (`fitting.compile_model(...)`), so an experiment may swap one for the length of
a run.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from components import domain
from components.settings import ModelConfig

# Training batches whose exact BatchNorm statistics replace the moving averages before each validation.
PRECISE_BN_BATCHES = 25


def one_hot(ds):
    """(x, class index) batches -> (x, one-hot) batches, as the categorical loss reads them."""
    import tensorflow as tf

    return ds.map(lambda x, y: (x, tf.one_hot(y, domain.NUM_CLASSES)), num_parallel_calls=tf.data.AUTOTUNE)


def compile_model(model, learning_rate, label_smoothing: float) -> None:
    """Adam at `learning_rate` (a number or a schedule), smoothed categorical cross-entropy, accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def learning_rate(config: ModelConfig, steps_per_epoch: int):
    """The phase-1 rate: constant, or with `cosine_decay` falling along a cosine to 5% over `config.epochs`."""
    if not config.cosine_decay:
        return config.learning_rate
    import keras

    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.05
    )


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


def precise_bn_callback(batches):
    """A Keras callback: before each validation pass, recompute BatchNorm statistics over `batches`."""
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            recompute_batchnorm(self.model, batches)

    return PreciseBatchNorm()


def callbacks(config: ModelConfig, checkpoint: Path, bn_batches=None) -> list:
    """Precise BN (when `bn_batches` is given), early stopping on val_loss with the best weights kept, a checkpoint."""
    import keras

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    found = [precise_bn_callback(bn_batches)] if bn_batches is not None else []
    return found + [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
    ]


def fit(
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
    """model.fit with `callbacks(...)` and class weights; the history as {metric: [float per epoch]}."""
    # Keras writes its progress to stdout; stdout belongs to `--json`, so send it to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        history = model.fit(
            train,
            validation_data=val,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=weights,
            callbacks=callbacks(config, checkpoint, bn_batches),
            verbose=verbose,
        )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def merge_histories(history: dict, extra: dict) -> dict:
    """Append `extra`'s epochs to `history` (in place), metric by metric."""
    for key, values in extra.items():
        history.setdefault(key, []).extend(values)
    return history


def predict_arrays(extractor, ds) -> tuple[list[np.ndarray], np.ndarray]:
    """Run a multi-output `extractor` over (x, y) batches: ([outputs...], labels)."""
    outs: list[list[np.ndarray]] = []
    labels = []
    for x, y in ds:
        result = extractor.predict_on_batch(x)
        result = result if isinstance(result, (list, tuple)) else [result]
        outs.append([np.asarray(r) for r in result])
        labels.append(y.numpy())
    return [np.concatenate(parts) for parts in zip(*outs)], np.concatenate(labels)
