"""Evaluation numbers on hand-checkable cases, the full run_evaluate on the tiny model, and the comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.evaluate.compare import compare
from components.evaluate.executor import run_evaluate
from components.evaluate.metrics import bootstrap_ci, classification_metrics
from components.evaluate.robustness import PERTURBATIONS, perturb

SCHEMA_KEYS = {"model", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "weighted_f1", "per_class",
               "confusion_matrix", "class_names", "params", "size_bytes", "latency_ms", "throughput_b32", "robustness",
               "robustness_worst", "shortcut_baseline", "saved_model", "test_images"}


def test_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 1, 1, 1, 2, 3, 3, 3])
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == 0.75
    assert m["per_class"]["Benign"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["Early"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["Early"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 0.8) / 4)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.8, y_true, rng.integers(0, 4, 200))
    a = bootstrap_ci(y_true, y_pred, resamples=300, seed=7)
    assert a == bootstrap_ci(y_true, y_pred, resamples=300, seed=7)
    m = classification_metrics(y_true, y_pred)
    assert a["accuracy_ci"][0] < m["accuracy"] < a["accuracy_ci"][1]
    assert a["macro_f1_ci"][0] < m["macro_f1"] < a["macro_f1_ci"][1]
    assert a["accuracy_ci"][1] - a["accuracy_ci"][0] < 0.2


def test_perturbations_are_fixed_and_in_range():
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    for name in PERTURBATIONS:
        y = perturb(x, name)
        assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
        np.testing.assert_array_equal(y, perturb(x, name))
    gray = perturb(x, "grayscale")
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    np.testing.assert_allclose(perturb(x, "brightness+15%"), np.clip(x * 1.15, 0, 1), atol=1e-6)


def test_evaluate_a_model_that_always_says_pre(tiny_split, tmp_path):
    """A real exported SavedModel with known output: every number of metrics.json can be checked by hand."""
    import keras

    from components.train.export import export_saved_model

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant([0.0, 0.0, 5.0, 0.0]))(x)
    export_saved_model(keras.Model(inputs, outputs), tmp_path / "saved_model", model_name="always-pre",
                       image_size=32, brightness="none")
    m = run_evaluate(tiny_split, tmp_path, tmp_path / "eval", bootstrap=200, latency_runs=5, shortcut=False)
    assert m["model"] == "always-pre" and m["test_images"] == 24
    assert m["accuracy"] == 0.25
    assert m["confusion_matrix"] == [[0, 0, 6, 0]] * 4
    assert m["per_class"]["Pre"] == {"precision": 0.25, "recall": 1.0, "f1": 0.4, "support": 6}
    assert m["per_class"]["Benign"]["recall"] == 0.0
    assert m["macro_f1"] == pytest.approx(0.1) and m["weighted_f1"] == pytest.approx(0.1)
    assert m["accuracy_ci"][0] <= 0.25 <= m["accuracy_ci"][1]
    assert all(v == 0.25 for v in m["robustness"].values()) and m["params"] == 4 * 3 + 4
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == 0.25
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_trained_model_and_compare(trained, tiny_split, tmp_path):
    m = run_evaluate(tiny_split, trained["out_dir"], tmp_path / "eval", bootstrap=200, latency_runs=5)
    assert SCHEMA_KEYS <= set(m)
    assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    assert set(m["robustness"]) == set(PERTURBATIONS) and m["robustness_worst"] == min(m["robustness"].values())
    assert m["robustness_clean"] == pytest.approx(m["accuracy"])  # pixels path agrees with the bytes path
    assert m["shortcut_baseline"]["accuracy"] >= 0.5  # colour gives the synthetic classes away, too
    assert m["latency_ms"]["batch1_p50"] > 0 and m["throughput_b32"] > 0 and m["size_bytes"] > 100_000
    assert m["weights_used"] == "random init" and m["params"] == trained["params"]
    table = compare([tmp_path / "eval", tmp_path / "eval" / "metrics.json"], tmp_path / "compare.md")
    assert table.count("| cnn |") == 4 and "grayscale" in table and "shortcut" in table
    assert Path(tmp_path / "compare.md").read_text() == table


def test_bootstrap_macro_f1_agrees_with_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score

    from components.evaluate.metrics import _macro_f1_from_confusion

    rng = np.random.default_rng(3)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 4, 30), rng.integers(0, 3, 30)  # class 3 never predicted
        cm = confusion_matrix(y_true, y_pred, labels=range(4))
        expected = f1_score(y_true, y_pred, labels=range(4), average="macro", zero_division=0)
        assert _macro_f1_from_confusion(cm) == pytest.approx(expected)


def test_colour_features_by_hand():
    from components.evaluate.shortcut import HSV_BINS, colour_features

    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    half = np.full((1, 4, 4, 3), 128, np.uint8)
    half[0, :2] = 0  # half black, half gray: value histogram split in two bins
    f = colour_features(np.concatenate([red, half]))
    assert f.shape == (2, 6 + 3 * HSV_BINS)
    np.testing.assert_allclose(f[0, :6], [1, 0, 0, 0, 0, 0])
    hue, sat, val = (f[0, 6 + i * HSV_BINS: 6 + (i + 1) * HSV_BINS] for i in range(3))
    assert hue[0] == 1 and sat[-1] == 1 and val[-1] == 1
    val2 = f[1, 6 + 2 * HSV_BINS:]
    assert val2[0] == 0.5 and val2[8] == 0.5 and val2.sum() == pytest.approx(1.0)


def test_shortcut_baseline_runs_on_the_split(tiny_split):
    from components.evaluate.shortcut import shortcut_on_split

    result = shortcut_on_split(tiny_split, seed=0)
    assert result["train_images"] == 48 and result["test_images"] == 24
    assert result["accuracy"] >= 0.5 and 0 <= result["macro_f1"] <= 1
    again = shortcut_on_split(tiny_split, seed=0)
    assert again.pop("cached") is True and again == result
    assert shortcut_on_split(tiny_split, seed=0, use_cache=False) == result  # seeded: recomputing agrees
