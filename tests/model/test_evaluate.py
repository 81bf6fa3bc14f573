"""Evaluation numbers on hand-checkable cases, the full run_evaluate on the tiny model, and the comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.evaluate.compare import compare
from components.evaluate.executor import run_evaluate
from components.evaluate.metrics import bootstrap_ci, classification_metrics
from components.evaluate.robustness import (
    MAGNIFICATIONS,
    PERTURBATIONS,
    encode,
    perturb,
    perturbed_bytes,
    perturbed_sets,
    plausible,
)

SCHEMA_KEYS = {
    "model",
    "accuracy",
    "accuracy_ci",
    "macro_f1",
    "macro_f1_ci",
    "weighted_f1",
    "per_class",
    "confusion_matrix",
    "class_names",
    "params",
    "size_bytes",
    "latency_ms",
    "throughput_b32",
    "robustness",
    "robustness_worst",
    "shortcut_baseline",
    "saved_model",
    "test_images",
}


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


def test_perturbations_are_fixed_change_the_image_and_say_their_severity():
    from PIL import Image

    x = np.random.default_rng(0).integers(30, 220, (16, 16, 3), dtype=np.uint8)
    for name in PERTURBATIONS:
        y = perturb(x, name)
        assert y.shape == x.shape and y.dtype == np.uint8, name
        np.testing.assert_array_equal(y, perturb(x, name))  # deterministic (noise is seeded per image)
        if PERTURBATIONS[name][0] != "jpeg":  # JPEG's loss happens when encoding
            assert np.abs(y.astype(int) - x).mean() > 0.5, name
        assert any(ch.isdigit() for ch in name) or name == "grayscale", name  # the severity is in the name
    gray = perturb(x, "grayscale")
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    bright = perturb(x, "brightness -25%").astype(float)
    assert abs(bright.mean() / x.mean() - 0.75) < 0.02
    jpeg = np.asarray(Image.open(__import__("io").BytesIO(encode(perturb(x, "JPEG quality 30"), "JPEG quality 30"))))
    import tensorflow as tf

    lossless = encode(x, "brightness +15%")
    assert lossless[:2] == b"BM"
    np.testing.assert_array_equal(tf.io.decode_image(lossless, channels=3).numpy(), x)  # what the model reads
    assert np.abs(jpeg.astype(int) - x).mean() > 1
    assert "grayscale" not in plausible() and len(plausible()) == len(PERTURBATIONS) - 1


def test_perturbed_sets_come_in_order_and_equal_the_serial_encoding():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(3)]
    names = ["sensor noise sigma 0.03", "JPEG quality 30", "grayscale"]
    sets = list(perturbed_sets(images, names))
    assert [name for name, _ in sets] == names
    for name, encoded in sets:
        assert encoded == perturbed_bytes(images, name), name
    assert list(perturbed_sets(images, [])) == []


def test_evaluate_a_model_that_always_says_pre(tiny_split, tmp_path):
    """A real exported SavedModel with known output: every number of metrics.json can be checked by hand."""
    from fixtures.colour_model import export_colour_model

    always_pre = np.array([0.0, 0.0, 5.0, 0.0], np.float32)
    export_colour_model(
        tmp_path / "saved_model", np.zeros((3, 4), np.float32), always_pre, model_name="always-pre", warmup_images=[]
    )
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


@pytest.mark.slow
def test_evaluate_trained_model_and_compare(trained, tiny_split, tmp_path):
    from PIL import Image

    other_lab = tmp_path / "other-lab"  # larger, differently coloured JPEGs: the external smears' path
    other_lab.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(other_lab / f"{i}.jpg")
    m = run_evaluate(
        tiny_split, trained["out_dir"], tmp_path / "eval", bootstrap=200, latency_runs=5, external_dir=other_lab
    )
    assert SCHEMA_KEYS <= set(m)
    external = m["external"]
    assert external["folder"] == "other-lab"
    halves = [external[h] for h in external if isinstance(external[h], dict)]
    assert sum(h["images"] for h in halves) == 6
    for half in halves:  # every detection method, the energy score from the Keras copy's logits included
        assert 0 <= half["referred"] <= 1 and set(half["auroc"]) >= {"energy"}
        assert all(0 <= v <= 1 for v in half["auroc"].values())
    assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    assert set(m["robustness"]) == set(PERTURBATIONS)
    gated = {k: v for k, v in m["robustness"].items() if k in plausible()}
    assert m["robustness_worst"] == min(gated.values()) and m["robustness_worst_name"] in gated
    assert m["shortcut_baseline"]["accuracy"] >= 0.5  # colour gives the synthetic classes away, too
    assert set(m["shortcut_baseline"]["robustness"]) == set(PERTURBATIONS)
    # The trust figures come from the served outputs of the calibrated export.
    r = m["referral"]
    assert 0 <= r["test_referral_rate"] <= 1 and r["coverage_target"] == 0.98
    assert 0 <= r["coverage"] <= 1
    assert r["mean_set_size"] >= 1 - r["set_size_counts"]["0"] / m["test_images"]
    assert len(r["risk_coverage"]) == 21 and r["risk_coverage"][0]["referred"] == 0
    assert r["risk_coverage"][0]["accuracy"] == pytest.approx(m["accuracy"])
    c = m["calibration"]
    assert c["temperature"] > 0 and 0 <= c["ece_after"] <= 1 and len(c["reliability_after"]) == 15
    assert m["latency_ms"]["batch1_p50"] > 0 and m["throughput_b32"] > 0 and m["size_bytes"] > 100_000
    assert m["weights_used"] == "random init" and m["params"] == trained["params"]
    # Missed malignancy clean, per perturbation and per magnification, from the same served outputs.
    malignant = int((np.array(m["confusion_matrix"])[1:]).sum())
    assert m["missed_malignancy"]["malignant_images"] == malignant
    assert m["missed_malignancy"]["missed"] <= sum(row[0] for row in m["confusion_matrix"][1:])
    assert set(m["robustness_missed_malignancy"]) == set(PERTURBATIONS)
    assert set(m["magnification"]) == set(MAGNIFICATIONS)
    for figures in m["magnification"].values():
        assert 0 <= figures["accuracy"] <= 1 and figures["missed_malignancy"]["malignant_images"] == malignant
    assert m["missed_malignancy_worst"]["name"] in set(plausible()) | set(MAGNIFICATIONS)
    assert m["benign_recall"]["images"] == m["per_class"]["Benign"]["support"]
    # The probes: every test image altered and sent through the served signature; Grad-CAM from the Keras copy.
    probes = m["probes"]
    assert probes["leukocytes_removed"]["images"] == probes["context_swapped"]["images"] == m["test_images"]
    assert 0 <= probes["leukocytes_removed"]["referred"] <= 1
    swapped = probes["context_swapped"]
    if swapped["answered"]:
        assert swapped["follows_leukocytes"] + swapped["follows_background"] <= 1
    assert probes["attention"]["measured"] >= 1 and probes["attention"]["median_ratio"] > 0
    table = compare([tmp_path / "eval", tmp_path / "eval" / "metrics.json"], tmp_path / "compare.md")
    assert table.count("| cnn |") == 4 and "grayscale" in table and "shortcut" in table
    assert Path(tmp_path / "compare.md").read_text() == table


def test_referral_summary_by_hand():
    from components.evaluate.trust import referral_summary

    probs = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.1, 0.8, 0.1, 0], [0, 0, 0.2, 0.8]])
    labels = np.array([0, 1, 1, 2])
    sets = probs >= 0.3
    refer = np.array([False, True, False, True])
    in_dist = np.array([True, True, True, False])
    r = referral_summary(probs, labels, refer, in_dist, sets, 0.98)
    assert r["test_referral_rate"] == 0.5 and r["ood_referral_rate"] == 0.25 and r["set_referral_rate"] == 0.25
    assert r["accepted"] == 2 and r["accepted_accuracy"] == 1.0 and r["referred_accuracy"] == 0.0
    assert r["coverage"] == 0.75  # image 3's set {Pro} misses Pre; image 1's {Benign, Early} holds Early
    assert r["mean_set_size"] == 1.25 and r["set_size_counts"]["2"] == 1
    # The curve refers what the model refers first, least confident first: image 1 (wrong) goes first.
    assert r["risk_coverage"][0]["accuracy"] == 0.5
    assert r["risk_coverage"][-1]["referred"] == 0.25 and r["risk_coverage"][-1]["accuracy"] == pytest.approx(2 / 3)


def test_external_halves_are_stable_and_disjoint(tmp_path):
    from components.evaluate.trust import external_halves

    for i in range(40):
        (tmp_path / f"smear-{i:03d}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    halves = external_halves(tmp_path)
    assert len(halves["choose"]) + len(halves["report"]) == 40
    assert not set(halves["choose"]) & set(halves["report"]) and 10 <= len(halves["report"]) <= 30
    assert external_halves(tmp_path) == halves
    with pytest.raises(FileNotFoundError, match="does not exist"):
        external_halves(tmp_path / "missing")


def test_calibration_numbers_by_hand():
    from components.train import calibration

    labels = np.array([0, 1, 2, 3] * 50)
    rng = np.random.default_rng(0)
    logits = np.eye(4)[labels] * 8.0 + rng.normal(0, 1, (200, 4))
    labels = np.where(rng.random(200) < 0.2, rng.integers(0, 4, 200), labels)  # 20% wrong at ~99.9%: overconfident
    t = calibration.fit_temperature(logits, labels)
    assert t > 1.0
    probs = calibration.softmax(logits, t)
    assert (
        calibration.expected_calibration_error(probs, labels)
        <= calibration.expected_calibration_error(calibration.softmax(logits), labels) + 1e-9
    )
    q = calibration.conformal_quantile(probs, labels, 0.9)
    sets = calibration.prediction_sets(probs, q)
    assert sets[np.arange(200), labels].mean() >= 0.9
    # A validation split with no error: the likelihood alone would sharpen without limit (to the 0.05 bound).
    true = np.array([0, 1, 2, 3] * 50)
    clean = np.eye(4)[true] * 8.0 + rng.normal(0, 0.5, (200, 4))
    assert 0.3 < calibration.fit_temperature(clean, true) <= 1.0
    assert calibration.fit_temperature(clean, true, prior_sd=1e6) < 0.3  # flat at machine precision long before
    # Mahalanobis: a far-away point scores far higher than the training points.
    feats = rng.normal(0, 1, (200, 5)) + np.eye(4, 5)[labels] * 3
    means, whitening = calibration.fit_mahalanobis(feats, labels, 4)
    inside = calibration.mahalanobis_score(feats, means, whitening)
    outside = calibration.mahalanobis_score(np.full((1, 5), 20.0), means, whitening)
    assert outside[0] > 10 * np.percentile(inside, 99)


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
    from components.colour_statistics import HSV_BINS, colour_features

    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    half = np.full((1, 4, 4, 3), 128, np.uint8)
    half[0, :2] = 0  # half black, half gray: value histogram split in two bins
    f = colour_features(np.concatenate([red, half]))
    assert f.shape == (2, 6 + 3 * HSV_BINS)
    np.testing.assert_allclose(f[0, :6], [1, 0, 0, 0, 0, 0])
    hue, sat, val = (f[0, 6 + i * HSV_BINS : 6 + (i + 1) * HSV_BINS] for i in range(3))
    assert hue[0] == 1 and sat[-1] == 1 and val[-1] == 1
    val2 = f[1, 6 + 2 * HSV_BINS :]
    assert val2[0] == 0.5 and val2[8] == 0.5 and val2.sum() == pytest.approx(1.0)


def test_hsv_histograms_bin_for_bin_as_scikit_image():
    from skimage.color import rgb2hsv

    from components.colour_statistics import HSV_BINS, hsv_histograms

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    rgb[0] = 128  # grey: hue and saturation 0
    rgb[1, ..., 1] = rgb[1, ..., 0]  # red and green tie
    rgb[2, ..., 2] = rgb[2, ..., 1]  # green and blue tie
    rgb[3] = 0  # black: saturation 0/0
    x = (rgb.astype(np.float32) / 255.0).reshape(6, -1, 3)
    hsv = rgb2hsv(x)
    bins = np.minimum((hsv * HSV_BINS).astype(np.int64), HSV_BINS - 1)
    expected = (
        np.stack([np.concatenate([np.bincount(bins[i, :, c], minlength=HSV_BINS) for c in range(3)]) for i in range(6)])
        / x.shape[1]
    )
    np.testing.assert_array_equal(hsv_histograms(x), expected)


def test_shortcut_baseline_runs_on_the_split(tiny_split):
    from components.evaluate.shortcut import shortcut_on_split

    result = shortcut_on_split(tiny_split, seed=0)
    assert result["train_images"] == 48 and result["test_images"] == 24
    assert result["accuracy"] >= 0.5 and 0 <= result["macro_f1"] <= 1
    again = shortcut_on_split(tiny_split, seed=0)
    assert again.pop("cached") is True and again == result
    assert shortcut_on_split(tiny_split, seed=0, use_cache=False) == result  # seeded: recomputing agrees


def _fit_on_logits(logits: np.ndarray, labels: np.ndarray):
    """fit_calibration with the logits as head features (identity head) and random mid-level features."""
    from components.train import calibration

    rng = np.random.default_rng(1)
    train_features, val_features = rng.normal(0, 1, (200, 5)), rng.normal(0, 1, (len(labels), 5))
    return calibration.fit_calibration(
        train_features,
        np.arange(200) % 4,
        logits,
        val_features,
        labels,
        np.eye(4),
        np.zeros(4),
        num_classes=4,
        ood_referral_rate=0.05,
        coverage=0.9,
    )


def test_temperature_stands_only_when_it_lowers_the_validation_ece():
    from components.train import calibration

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    pred = np.where(rng.random(400) < 0.8, labels, rng.integers(0, 4, 400))
    logits = np.eye(4)[pred] * 2.5 + rng.normal(0, 0.3, (400, 4))
    wrong = np.flatnonzero(pred != labels)[:6]
    logits[wrong] = np.eye(4)[pred[wrong]] * 60.0  # a few hugely confident mistakes dominate the likelihood
    fitted = _fit_on_logits(logits, labels)
    assert fitted.fitted_on["fitted_temperature"] > 2.0  # the NLL optimum softens everything ...
    assert (
        calibration.expected_calibration_error(
            calibration.softmax(logits, fitted.fitted_on["fitted_temperature"]), labels
        )
        > fitted.fitted_on["val_ece_before"]
    )  # ... and calibrates worse
    assert fitted.temperature == 1.0 and fitted.fitted_on["temperature_kept"] is False
    assert fitted.fitted_on["val_ece_after"] == fitted.fitted_on["val_ece_before"]
    # Overconfident everywhere (20% wrong at ~99.9%): the fitted temperature lowers the ECE and stands.
    true = np.array([0, 1, 2, 3] * 50)
    overconfident = np.eye(4)[true] * 8.0 + rng.normal(0, 1, (200, 4))
    noisy = np.where(rng.random(200) < 0.2, rng.integers(0, 4, 200), true)
    kept = _fit_on_logits(overconfident, noisy)
    assert kept.temperature > 1.0 and kept.fitted_on["temperature_kept"] is True
    assert kept.fitted_on["val_ece_after"] < kept.fitted_on["val_ece_before"]
