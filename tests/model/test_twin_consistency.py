"""Twin consistency (components/train/consistency.py): the pairs in each batch, the loss, and training with it."""

from __future__ import annotations

import json

import numpy as np

from components.settings import ModelConfig
from components.train import input as train_input
from components.train.executor import run_train


def test_twins_follow_their_images_in_order_overexposed_when_augmenting(tiny_split, monkeypatch):
    from components.train import augment, consistency

    monkeypatch.setattr(augment, "PHOTOMETRIC_PROBABILITY", 0.0)  # the lab's own changes off: the twin's light alone
    monkeypatch.setattr(augment, "GRAYSCALE_PROBABILITY", 0.0)
    monkeypatch.setattr(train_input, "_geometry", lambda seed: (lambda x, training: x))  # no geometry: pixels compare
    x, y = next(iter(train_input.dataset(tiny_split, "train", 32, 8, training=True, augment=True, twins=True)))
    x, y = x.numpy(), y.numpy()
    assert x.shape[0] == 8 and np.array_equal(y[:4], y[4:])
    low, high = consistency.TWIN_GAINS
    for image, twin in zip(x[:4], x[4:]):
        unclipped = twin < 0.999
        gain = twin[unclipped] / np.maximum(image[unclipped], 1e-6)
        assert low - 1e-3 <= np.median(gain) <= high + 1e-3
        np.testing.assert_allclose(twin, np.minimum(image * np.median(gain), 1.0), atol=2e-3)
    plain_x, plain_y = next(iter(train_input.dataset(tiny_split, "val", 32, 8, twins=True)))
    np.testing.assert_array_equal(plain_x[:4], plain_x[4:])  # validation: identical twins
    np.testing.assert_array_equal(plain_y[:4], plain_y[4:])


def test_the_loss_is_the_cross_entropy_when_twins_agree_and_grows_when_they_do_not():
    import keras
    import tensorflow as tf

    from components.train.consistency import twin_consistency_loss

    labels = tf.one_hot([0, 1, 0, 1], 4)
    agree = tf.constant([[.7, .1, .1, .1], [.1, .7, .1, .1]] * 2)
    disagree = tf.constant([[.7, .1, .1, .1], [.1, .7, .1, .1], [.1, .1, .7, .1], [.1, .7, .1, .1]])
    cross_entropy = keras.losses.CategoricalCrossentropy()
    np.testing.assert_allclose(float(twin_consistency_loss(5.0)(labels, agree)), float(cross_entropy(labels, agree)),
                               rtol=1e-6)
    weak, strong = (float(twin_consistency_loss(w)(labels, disagree)) for w in (1.0, 5.0))
    assert float(cross_entropy(labels, disagree)) < weak < strong


def test_training_with_twins_takes_twice_the_steps_and_keeps_val_loss_the_cross_entropy(tiny_split, tmp_path):
    import keras

    from components.train import models

    config = ModelConfig("cnn", image_size=32, weights="none", batch_size=16, epochs=1, patience=1,
                         twin_consistency=1.0)
    result = run_train(tiny_split, tmp_path / "cnn", config, verbose=0, export_saved_model=False)
    model = models.load_keras_model(tmp_path / "cnn" / "keras" / "model.keras")
    model.compile(loss=keras.losses.CategoricalCrossentropy())
    x, y = train_input.pixels_and_labels(tiny_split, "val", 32)
    np.testing.assert_allclose(result["val_loss"], model.evaluate(x, keras.utils.to_categorical(y, 4), verbose=0),
                               rtol=1e-3)
    assert json.loads((tmp_path / "cnn" / "train.json").read_text())["config"]["twin_consistency"] == 1.0
