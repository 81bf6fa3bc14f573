"""The three builders: shapes, layer contract (feature_map, probabilities), normalisation, weights resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from components.settings import ModelConfig
from components.train import models


@pytest.mark.parametrize("name", ["cnn", "resnet50", "mobilenetv2"])
def test_builder_builds_with_gradcam_hook(name):
    model = models.build_model(ModelConfig(name, image_size=32, weights="none", brightness="mean"))
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 4)
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    assert model.weights_used == "random init"
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    features, probs = models.gradcam_model(model)(x)
    assert len(features.shape) == 4 and features.shape[0] == 2
    np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(probs), model.predict(x, verbose=0), atol=1e-5)
    if name != "cnn":  # random init: nothing to preserve, the base trains from the start
        assert models.base_layer(model).trainable is True


def test_cached_feature_base_starts_frozen():
    model = models.build_model(ModelConfig("resnet50", image_size=32, weights="none", cache_features=True))
    assert models.base_layer(model).trainable is False


@pytest.mark.parametrize("mode,app", [("tf", "mobilenet_v2"), ("caffe", "resnet50")])
def test_normalisation_matches_keras_preprocess_input(mode, app):
    import keras

    normalize = models.graph_layers().normalize
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    expected = getattr(keras.applications, app).preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(normalize(mode)(x)), expected, atol=1e-3)


def test_fine_tune_unfreezes_only_the_top_and_keeps_batchnorm_frozen():
    import keras

    model = models.build_model(ModelConfig("mobilenetv2", image_size=32, weights="none", cache_features=True))
    frozen = len(model.trainable_weights)
    models.set_fine_tune(model, 10)
    base = models.base_layer(model)
    assert base.trainable
    assert not any(layer.trainable for layer in base.layers[:-10])
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert len(model.trainable_weights) > frozen


def test_weights_from_a_file_path_are_loaded(tmp_path):
    source = models.build_model(ModelConfig("mobilenetv2", image_size=32, weights="none", seed=1))
    path = tmp_path / "base.weights.h5"
    models.base_layer(source).save_weights(path)
    model = models.build_model(ModelConfig("mobilenetv2", image_size=32, weights=str(path)))
    assert model.weights_used == str(path.resolve())
    for a, b in zip(models.base_layer(source).weights, models.base_layer(model).weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(models.WeightsNotFoundError, match="nowhere.h5") as err:
        models.build_model(ModelConfig("resnet50", image_size=32, weights=str(missing)))
    assert "--weights none" in str(err.value)


def test_missing_imagenet_weights_say_where_keras_looked(tiny_split, tmp_path):
    """`leukoflow train` with an empty Keras cache: a clear error naming $KERAS_HOME/models/<file>."""
    keras_home = tmp_path / "keras-home"
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "train",
            "--model",
            "mobilenetv2",
            "--weights",
            "imagenet",
            "--image-size",
            "32",
            "--split",
            str(tiny_split),
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if proc.returncode == 0:
        pytest.skip("this machine could download the ImageNet weights")
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    expected = keras_home / "models" / models.mobilenet_notop_name(224)
    assert str(expected) in error
    assert "make weights" in error and "--weights" in error


def test_imagenet_weights_of_a_model_without_a_rule_are_an_error(tmp_path, monkeypatch):
    """A fourth model must not silently look for ResNet50's file: a clear error names the model and the fix."""
    monkeypatch.setattr(models, "keras_cache_dir", lambda: tmp_path)
    (tmp_path / models.RESNET50_NOTOP).write_bytes(b"not really weights")
    with pytest.raises(ValueError, match="no ImageNet weights rule for model 'efficientnet'.*--weights none"):
        models.resolve_weights(ModelConfig("efficientnet", image_size=32, weights="imagenet"))
    assert models.resolve_weights(ModelConfig("resnet50", image_size=32, weights="imagenet"))[0] == "imagenet"


def test_views_are_the_symmetries_of_the_square():
    views_layer = models.graph_layers().views
    x = np.random.default_rng(2).random((2, 5, 5, 3), dtype=np.float32)
    stacked = np.asarray(views_layer(8)(x)).reshape(8, 2, 5, 5, 3)
    np.testing.assert_array_equal(stacked[0], x)  # identity first: CombineViews(how="first") relies on it
    expected = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    expected += [np.flip(e, axis=2) for e in expected]
    key = lambda a: a.tobytes()  # noqa: E731
    assert sorted(map(key, stacked)) == sorted(map(key, expected))  # all eight, each once
    with pytest.raises(ValueError, match="views must be one of"):
        views_layer(3)  # the layer checks too: a model.keras edited by hand


@pytest.mark.parametrize("name", ["cnn", "mobilenetv2"])
def test_views_average_the_pooled_features_of_each_orientation(name, tmp_path):
    """views=4: the head sees the mean of the single-view pooled features; OOD features are the upright view's."""
    single = models.build_model(ModelConfig(name, image_size=32, weights="none", seed=3))
    four = models.build_model(ModelConfig(name, image_size=32, weights="none", seed=3, views=4))
    four.set_weights(single.get_weights())
    x = np.random.default_rng(4).random((3, 32, 32, 3), dtype=np.float32)
    oriented = np.asarray(models.graph_layers().views(4)(x)).reshape(4, 3, 32, 32, 3)
    head_1 = models.calibration_features_model(single)
    per_view = [np.asarray(head_1(v, training=False)[0]) for v in oriented]
    head, mid = (np.asarray(t) for t in models.calibration_features_model(four)(x, training=False))
    scale = np.abs(per_view).max()  # a random-init MobileNetV2's pooled features are tiny (~1e-12)
    np.testing.assert_allclose(head / scale, np.mean(per_view, axis=0) / scale, atol=1e-5)
    assert np.abs(per_view[0] - per_view[1]).max() > 1e-2 * scale  # the views differ: the mean is not trivial
    upright_mid = np.asarray(head_1(x, training=False)[1])
    np.testing.assert_allclose(mid / np.abs(upright_mid).max(), upright_mid / np.abs(upright_mid).max(), atol=1e-5)
    assert models.views(four) == 4 and models.views(single) == 1
    features, probs = models.gradcam_model(four)(x)
    assert features.shape[0] == 4 * 3 and probs.shape == (3, 4)  # Grad-CAM reads the first (upright) view
    path = tmp_path / "four.keras"
    four.save(path)
    np.testing.assert_allclose(
        models.load_keras_model(path).predict(x, verbose=0), four.predict(x, verbose=0), atol=1e-5
    )


def test_train_refuses_an_unsupported_view_count_before_any_work(tmp_path):
    """`leukoflow train --views 3`: a clear error naming the allowed counts, nothing written."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "train",
            "--model",
            "cnn",
            "--views",
            "3",
            "--split",
            str(tmp_path / "no-split"),
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["error"] == "views must be one of 1, 2, 4, 8, got 3"
    assert not (tmp_path / "out").exists()
    assert ModelConfig("cnn", views=8).views == 8
