"""The feature module answers to the changes it is meant to see."""

from __future__ import annotations

import numpy as np
import pytest
from monitor_smears import smear

from components.host_features import FEATURE_NAMES, file_features, image_features, mean_brightness


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return smear("Pre", np.random.default_rng(0), size=64)


def test_all_features_finite(image):
    features = image_features(image)
    assert list(features) == list(FEATURE_NAMES)
    assert all(np.isfinite(v) for v in features.values())
    assert 0 < features["foreground_fraction"] < 1  # the nuclei are found as stained foreground


def test_brighter_lamp_raises_brightness(image):
    base, bright = image_features(image), image_features(np.clip(image * 1.15, 0, 255).astype(np.uint8))
    assert bright["brightness_mean"] > base["brightness_mean"]
    assert bright["background_brightness"] > base["background_brightness"]
    assert all(bright[c] > base[c] for c in ("red_mean", "green_mean", "blue_mean"))
    assert mean_brightness(np.clip(image * 1.15, 0, 255).astype(np.uint8)) > mean_brightness(image)


def test_washed_out_stain_lowers_saturation_and_stain(image):
    grey = image.mean(axis=2, keepdims=True)
    washed = (grey + 0.5 * (image - grey)).astype(np.uint8)  # half the colour
    base, pale = image_features(image), image_features(washed)
    assert pale["saturation_mean"] < base["saturation_mean"]
    assert pale["stain_h_mean"] < base["stain_h_mean"]


def test_hue_and_blue_balance_follow_a_colour_cast(image):
    bluer = image.astype(np.int16)
    bluer[..., 2] += 25
    bluer[..., 0] -= 25
    base, cast = image_features(image), image_features(np.clip(bluer, 0, 255).astype(np.uint8))
    assert cast["blue_mean"] > base["blue_mean"] and cast["red_mean"] < base["red_mean"]
    assert cast["hue_mean"] != pytest.approx(base["hue_mean"], abs=1e-3)


def test_contrast_drops_with_blur_and_constant_image_is_safe(image, tmp_path):
    from PIL import Image, ImageFilter

    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))
    assert image_features(blurred)["contrast"] < image_features(image)["contrast"]
    flat = image_features(np.full((16, 16, 3), 200, np.uint8))
    assert flat["foreground_fraction"] == 0 and np.isfinite(flat["stain_h_mean"])
    Image.fromarray(image).save(tmp_path / "x.png")
    assert file_features(tmp_path / "x.png") == pytest.approx(image_features(image))
    with pytest.raises(ValueError, match="RGB"):
        image_features(np.zeros((8, 8), np.uint8))
