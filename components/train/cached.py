"""Training on cached activations: run the frozen bottom of a pretrained base once, train what is above it.

The seam the trainer uses when `ModelConfig.cache_features` is set (and the base is pretrained), and
that experiments reuse to train many tops on one set of cached activations:

- `bottom_and_top(model, config)` cuts a built model at `config.cache_cut` into two models that share
  its layers;
- `train_on_cached_activations(...)` caches the bottom's outputs (clean images plus augmented copies)
  and fits the top on them, leaving the full model trained.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from components import domain
from components.settings import ModelConfig
from components.train import fitting, models
from components.train import input as train_input

log = logging.getLogger(__name__)


def bottom_and_top(model, config: ModelConfig):
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


def cache_activations(bottom, config: ModelConfig, split_dir: Path):
    """The bottom's outputs: (training mids, training cut activations as float16, labels) over the clean
    images and `config.augment_copies` augmented copies (none without `augment`), and (val cut, val labels)."""
    batch = max(config.batch_size, 64)
    (train_mid, train_x), train_y = fitting.predict_arrays(
        bottom, train_input.dataset(split_dir, "train", config.image_size, batch, cache=False)
    )
    (_, val_x), val_y = fitting.predict_arrays(
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
            (mid, x), y = fitting.predict_arrays(bottom, augmented)
            mids.append(mid)
            xs.append(x.astype(np.float16))  # half the memory; the top computes in float32
            ys.append(y)
    for copy in range(config.context_swap_copies if config.augment else 0):
        (mid, x), y = fitting.predict_arrays(bottom, context_swapped(split_dir, config, batch, config.seed + copy))
        mids.append(mid)
        xs.append(x.astype(np.float16))
        ys.append(y)
    return (np.concatenate(mids), np.concatenate(xs), np.concatenate(ys)), (val_x, val_y)


def context_swapped(split_dir: Path, config: ModelConfig, batch: int, seed: int):
    """The training images' leukocytes, each pasted on another class's training image (its own leukocytes removed),
    labelled by the leukocytes, with a new lab drawn per image: what stays true of the class is the cells alone.

    The segmentation is components/leukocytes.py's, run once per copy on the host (about 20 ms an image).
    """
    import tensorflow as tf

    from components import leukocytes
    from components.train.augment import photometric

    stored = train_input.stored_size(split_dir, "train")
    images, labels = [], []
    for x, y in train_input.dataset(split_dir, "train", stored, 256, cache=False):
        images.append(np.round(x.numpy() * 255.0).astype(np.uint8))
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    partners = leukocytes.swap_partners(labels, seed)
    swapped = np.stack([leukocytes.paste_leukocytes(images[i], images[j]) for i, j in enumerate(partners)])
    size, overexposure = config.image_size, config.overexposure

    def prepare(pixels, label):
        image = tf.image.convert_image_dtype(pixels, tf.float32)
        if stored != size:
            image = domain.tf_resize(image, size)
        return photometric(image, overexposure), label

    ds = tf.data.Dataset.from_tensor_slices((swapped, labels)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def train_on_cached_activations(
    model, config: ModelConfig, split_dir: Path, weights: dict, checkpoint: Path, verbose: int
) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Frozen bottom of the base: cache its activations once per copy, train the rest on them.

    With `augment`, the training set is the clean images plus `augment_copies` augmented copies of
    each (every copy a new random lab and geometry), so what trains learns what survives a change
    of stain, lamp and camera at the cost of one bottom pass per copy. Returns the history and the
    pooled mid-level features of every cached training copy (the OOD score is fitted on them).
    """
    import tensorflow as tf

    bottom, top = bottom_and_top(model, config)
    started = time.perf_counter()
    (train_mids, train_x, train_y), (val_x, val_y) = cache_activations(bottom, config, split_dir)
    log.info(
        "cached %s activations at %s for %d training copies (%d augmented) and val in %.1fs",
        config.name,
        config.cache_cut or "the pooled features",
        len(train_x),
        config.augment_copies if config.augment else 0,
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
    fitting.compile_model(
        top,
        fitting.learning_rate(config, train_input.steps_per_epoch(len(train_x), config.batch_size)),
        config.label_smoothing,
    )
    history = fitting.fit(
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
    return history, (train_mids, train_y)
