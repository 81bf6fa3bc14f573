"""run_train on the tiny synthetic split: it learns, writes every artifact, and the input pipeline behaves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.settings import ModelConfig
from components.train import input as train_input
from components.train.executor import class_weights, run_train


def test_training_learns_the_synthetic_split(trained):
    assert trained["val_accuracy"] >= 0.6, trained  # chance is 0.25
    out = Path(trained["out_dir"])
    for rel in (
        "keras/model.keras",
        "saved_model/saved_model.pb",
        "history.json",
        "curves.png",
        "train.json",
        "checkpoints/best.weights.h5",
    ):
        assert (out / rel).is_file(), rel
    info = json.loads((out / "train.json").read_text())
    assert info["weights_used"] == "random init"
    assert info["epochs_run"] == len(json.loads((out / "history.json").read_text())["loss"]) > 0
    assert info["params"] > 10_000 and info["wall_time_s"] > 0
    assert set(info["class_weights"]) == {"Benign", "Early", "Pre", "Pro"}
    assert info["config"]["name"] == "cnn" and info["mixed_precision"] is False


def test_class_weights_are_balanced_from_counts():
    weights = class_weights(np.array([0, 0, 0, 1]))
    assert weights[0] == 4 / (2 * 3) and weights[1] == 2.0
    assert weights[2] == weights[3] == 1.0  # absent from train


def test_benign_weight_multiplies_only_benigns_balanced_weight():
    labels = np.array([0, 0, 0, 1])
    plain, doubled = class_weights(labels), class_weights(labels, 2.0)
    assert doubled[0] == 2 * plain[0] and {k: doubled[k] for k in (1, 2, 3)} == {k: plain[k] for k in (1, 2, 3)}
    with pytest.raises(ValueError, match="benign_factor must be positive"):
        class_weights(labels, 0.0)
    with pytest.raises(ValueError, match="benign_weight must be positive"):
        ModelConfig("cnn", benign_weight=-1.0)


def test_augmentation_only_on_training_batches(tiny_split):
    plain = next(iter(train_input.dataset(tiny_split, "train", 32, 8)))[0].numpy()
    again = next(iter(train_input.dataset(tiny_split, "train", 32, 8)))[0].numpy()
    np.testing.assert_array_equal(plain, again)  # eval pipeline: deterministic, untouched
    augmented = next(iter(train_input.dataset(tiny_split, "train", 32, 8, training=True, augment=True)))[0].numpy()
    assert augmented.shape == plain.shape and augmented.dtype == np.float32
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    resized = next(iter(train_input.dataset(tiny_split, "val", 16, 4)))[0]
    assert resized.shape == (4, 16, 16, 3)


def test_overexposure_scales_the_light_and_clips_what_saturates(monkeypatch):
    import tensorflow as tf

    from components.train import augment

    monkeypatch.setattr(augment, "PHOTOMETRIC_PROBABILITY", 0.0)  # the lab's own changes off: overexposure alone
    monkeypatch.setattr(augment, "GRAYSCALE_PROBABILITY", 0.0)
    image = tf.constant(np.stack([np.full((4, 4), v, np.float32) for v in (0.2, 0.5, 0.95)], axis=-1))
    np.testing.assert_array_equal(augment.photometric(image, overexposure=0.0).numpy(), image.numpy())
    low, high = augment.OVEREXPOSURE
    gains = set()
    for _ in range(8):
        out = augment.photometric(image, overexposure=1.0).numpy()
        gain = out[..., 0] / 0.2
        assert np.allclose(gain, gain.flat[0], rtol=1e-5) and low <= gain.flat[0] <= high
        np.testing.assert_allclose(out[..., 1], 0.5 * gain, rtol=1e-5)  # cells: the same gain, not clipped
        np.testing.assert_allclose(out[..., 2], np.minimum(0.95 * gain, 1.0), rtol=1e-5)  # background: clipped
        gains.add(round(float(gain.flat[0]), 4))
    assert len(gains) > 1  # every image draws its own gain


def test_overexposure_reaches_the_training_batches_only_when_asked(tiny_split, monkeypatch):
    from components.train import augment

    monkeypatch.setattr(augment, "PHOTOMETRIC_PROBABILITY", 0.0)
    monkeypatch.setattr(augment, "GRAYSCALE_PROBABILITY", 0.0)
    monkeypatch.setattr(augment, "OVEREXPOSURE", (1.5, 1.5))

    def batch(**kwargs):
        return next(iter(train_input.dataset(tiny_split, "train", 32, 8, augment=True, seed=3, **kwargs)))[0].numpy()

    plain, bright = batch(), batch(overexposure=1.0)
    assert bright.mean() > plain.mean() * 1.1 and bright.max() <= 1.0


def test_cached_features_then_fine_tuning(tiny_split, tmp_path):
    """Transfer model: head on cached frozen-base features, then fine-tuning the top of the base."""
    config = ModelConfig(
        "mobilenetv2",
        image_size=32,
        weights="none",
        batch_size=16,
        epochs=2,
        patience=2,
        cache_features=True,
        augment=False,
        fine_tune_epochs=1,
        fine_tune_layers=8,
    )
    result = run_train(tiny_split, tmp_path / "mnv2", config, verbose=0, export_saved_model=False)
    history = json.loads((tmp_path / "mnv2" / "history.json").read_text())
    assert history["phase"] == ["cached_activations"] * 2 + ["fine_tune"]
    assert result["epochs_run"] == 3 and result["trainable_params"] > 5124
    assert (tmp_path / "mnv2" / "keras" / "model.keras").is_file() and result["saved_model"] is None


def test_cached_top_trains_on_one_view_and_the_served_model_answers_on_four(tiny_split, tmp_path):
    """views=4 with a cut inside the base: the served probabilities are the calibrated mean of the views' logits."""
    import tensorflow as tf

    from components.train import calibration, models

    # ResNet50: a random-init MobileNetV2's features are ~1e-12, so its views would agree trivially.
    config = ModelConfig(
        "resnet50",
        image_size=32,
        weights="none",
        batch_size=16,
        epochs=2,
        patience=2,
        cache_features=True,
        cache_cut="conv5_block2_out",
        augment_copies=1,
        cosine_decay=True,
        views=4,
    )
    result = run_train(tiny_split, tmp_path / "r50", config, verbose=0)
    trained = models.load_keras_model(tmp_path / "r50" / "keras" / "model.keras")
    assert models.views(trained) == 4 and result["config"]["views"] == 4
    one_view = models.build_model(ModelConfig("resnet50", image_size=32, weights="none"))
    one_view.set_weights(trained.get_weights())  # the view layers hold no weights
    x = np.random.default_rng(5).random((2, 32, 32, 3), dtype=np.float32)
    kernel, bias = trained.get_layer(models.OUTPUT_LAYER).get_weights()
    head = models.calibration_features_model(one_view)
    per_view = np.stack(
        [
            np.asarray(head(v, training=False)[0]) @ kernel + bias
            for v in np.asarray(models.graph_layers().views(4)(x)).reshape(4, 2, 32, 32, 3)
        ]
    )
    assert np.ptp(per_view, axis=0).max() > 1e-2  # the views disagree: serving one of them would fail below
    logits = per_view.mean(axis=0)
    served = tf.saved_model.load(result["saved_model"]).signatures["predict_pixels"](pixels=tf.constant(x))
    expected = calibration.softmax(logits, result["calibration"]["temperature"])
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-3, atol=1e-4)


def test_precise_batchnorm_sets_exact_statistics():
    import keras

    from components.train.fitting import recompute_batchnorm

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(5.0, 2.0, (8, 3)).astype(np.float32), None) for _ in range(3)]
    assert recompute_batchnorm(model, batches) == 3
    bn = model.layers[-1]
    everything = np.concatenate([b[0] for b in batches])
    np.testing.assert_allclose(np.asarray(bn.moving_mean), everything.mean(axis=0), rtol=1e-5)
    per_batch_var = np.mean([b[0].var(axis=0) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), per_batch_var, rtol=1e-4)
    assert bn.momentum == 0.99


@pytest.mark.parametrize("cosine_decay", [False, True])
def test_cached_head_folds_into_the_full_model(tiny_split, tmp_path, cosine_decay):
    """The head trained on standardised cached features, folded into Dense, gives the same val accuracy in the full model."""
    config = ModelConfig(
        "resnet50",
        image_size=32,
        weights="none",
        batch_size=16,
        epochs=3,
        patience=3,
        cache_features=True,
        augment=False,
        cosine_decay=cosine_decay,
    )
    result = run_train(tiny_split, tmp_path / "r50", config, verbose=0, export_saved_model=False)
    history = json.loads((tmp_path / "r50" / "history.json").read_text())
    best = int(np.argmin(history["val_loss"]))
    assert abs(result["val_accuracy"] - history["val_accuracy"][best]) < 1e-6
    assert abs(result["val_loss"] - history["val_loss"][best]) < 1e-3


def test_learning_rate_is_constant_or_a_cosine_to_five_percent():
    from components.train.fitting import learning_rate

    assert learning_rate(ModelConfig("cnn", learning_rate=1e-3, epochs=4), 10) == 1e-3
    schedule = learning_rate(ModelConfig("cnn", learning_rate=1e-3, epochs=4, cosine_decay=True), 10)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5), rel=1e-5)  # half way down the cosine
    assert float(schedule(40)) == pytest.approx(5e-5, rel=1e-5)  # the end of the last epoch


def test_end_to_end_training_follows_the_cosine(tiny_split, tmp_path, monkeypatch):
    """The CNN path (no cached features) compiles with the schedule, so the rate falls within its epochs."""
    import keras

    from components.train import fitting

    rates = []
    original = fitting.compile_model

    def recording(model, rate, smoothing):
        rates.append(rate)
        original(model, rate, smoothing)

    monkeypatch.setattr(fitting, "compile_model", recording)
    config = ModelConfig(
        "cnn", image_size=32, weights="none", batch_size=16, epochs=2, patience=2, augment=False, cosine_decay=True
    )
    run_train(tiny_split, tmp_path / "cnn", config, verbose=0, export_saved_model=False)
    assert isinstance(rates[0], keras.optimizers.schedules.CosineDecay)
    steps = train_input.steps_per_epoch(len(train_input.labels(tiny_split, "train")), 16)
    assert rates[0].decay_steps == 2 * steps


@pytest.mark.parametrize("augment", [False, True])
def test_precise_batchnorm_statistics_come_from_batches_augmented_as_training_sees_them(
    tiny_split, tmp_path, monkeypatch, augment
):
    """Before each validation BatchNorm gets the statistics of the training distribution: augmented when training is."""
    from components.train import fitting

    seen = []
    original = fitting.recompute_batchnorm

    def recording(model, batches):
        seen.append([x.numpy() for x, _ in batches])
        return original(model, batches)

    monkeypatch.setattr(fitting, "recompute_batchnorm", recording)
    config = ModelConfig(
        "cnn", image_size=32, weights="none", batch_size=16, epochs=1, patience=1, augment=augment, overexposure=0.5
    )
    run_train(tiny_split, tmp_path / "cnn", config, verbose=0, export_saved_model=False)
    clean = [
        x.numpy()
        for x, _ in train_input.dataset(tiny_split, "train", 32, 16, training=True, seed=config.seed, cache=False).take(
            len(seen[0])
        )
    ]
    assert seen and len(seen[0]) == len(clean)
    same = all(np.array_equal(a, b) for a, b in zip(seen[0], clean))
    assert same is (not augment)
