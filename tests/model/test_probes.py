"""Missed malignancy, magnification and the right-reason probes, by hand on tiny drawn smears."""

from __future__ import annotations

import numpy as np
import pytest
from test_leukocytes import smear

from components import leukocytes
from components.evaluate import malignancy, probes
from components.evaluate.robustness import MAGNIFICATIONS, magnify, perturb


def test_wilson_interval_by_hand():
    low, high = malignancy.wilson_interval(0, 100)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.03699, abs=1e-4)
    low, high = malignancy.wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert malignancy.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        malignancy.wilson_interval(3, 2)


def test_missed_malignancy_counts_only_benign_answers_that_are_not_referred():
    # truth:    B  E  E  P  P  Pro
    y_true = np.array([0, 1, 1, 2, 2, 3])
    y_pred = np.array([0, 0, 0, 2, 0, 3])
    refer = np.array([0, 1, 0, 0, 0, 0], bool)
    m = malignancy.missed_malignancy(y_true, y_pred, refer)
    assert m["malignant_images"] == 5
    assert m["missed"] == 2  # the Early answered Benign unreferred, and the Pre answered Benign
    assert m["missed_share"] == pytest.approx(0.4)
    assert m["sensitivity"] == pytest.approx(0.6)  # one referred, two right
    assert m["referred_malignant"] == 1
    assert m["missed_share_ci"][0] < 0.4 < m["missed_share_ci"][1]
    assert malignancy.missed_malignancy(y_true, y_pred)["missed"] == 3  # without referral


def test_benign_recall_has_its_interval():
    r = malignancy.benign_recall(np.array([0, 0, 0, 1]), np.array([0, 1, 0, 1]))
    assert r["recall"] == pytest.approx(2 / 3) and r["images"] == 3
    assert r["ci"][0] < 2 / 3 < r["ci"][1]


def test_magnification_keeps_the_size_and_zooms_about_the_centre():
    image = smear([(32, 32, 6)])
    for name in MAGNIFICATIONS:
        assert perturb(image, name).shape == image.shape
    area = leukocytes.leukocyte_mask(image).mean()
    assert leukocytes.leukocyte_mask(magnify(image, 2.0)).mean() > 2.5 * area  # the cell fills 4x the share
    assert leukocytes.leukocyte_mask(magnify(image, 0.6)).mean() < 0.6 * area
    assert np.array_equal(magnify(image, 1.0), image)
    with pytest.raises(ValueError):
        magnify(image, 0.0)


def by_cell_colour(threshold: float = 0.5):
    """A stand-in served model: class 1 when the image holds a white cell, class 0 otherwise; it refers when the
    cell covers less than `threshold` of a fixed share (so an image without cells is referred)."""

    def run(images):
        from components import domain

        area = np.array([leukocytes.leukocyte_mask(domain.load_rgb(b)).mean() for b in images])
        probabilities = np.stack([1.0 - (area > 0.01), (area > 0.01)], axis=1).astype(float)
        return {"probabilities": probabilities, "refer": area < 0.01 * threshold}

    return run


def test_a_model_reading_the_cells_refers_the_removed_and_follows_the_pasted_cells():
    images = [smear([(20, 40, 8)], seed=i) for i in range(3)] + [smear([], seed=10 + i) for i in range(3)]
    labels = np.array([1, 1, 1, 0, 0, 0])
    removed = probes.leukocytes_removed(by_cell_colour(), images, labels)
    assert removed["referred"] == pytest.approx(1.0) and removed["answered_accuracy"] is None
    swapped = probes.context_swapped(by_cell_colour(), images, labels)
    # Class-1 cells on class-0 backgrounds are answered 1; class-0 images (no cells) on class-1 backgrounds
    # lose the background's cells and are referred.
    assert swapped["answered"] == 3
    assert swapped["follows_leukocytes"] == pytest.approx(1.0) and swapped["follows_background"] == 0.0


def test_swap_partners_are_of_another_class_and_seeded():
    labels = np.array([0, 0, 1, 2, 2, 3])
    partners = leukocytes.swap_partners(labels, 11)
    assert np.all(labels[partners] != labels)
    assert np.array_equal(partners, leukocytes.swap_partners(labels, 11))
    with pytest.raises(ValueError, match="two classes"):
        leukocytes.swap_partners(np.zeros(3, int), 11)


def test_attention_ratio_by_hand():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # a quarter of the image
    cam = np.zeros((4, 4))
    cam[:2, :2] = 1.0
    assert probes.attention_ratio(cam, mask) == pytest.approx(4.0)  # all the mass on a quarter
    assert probes.attention_ratio(np.ones((4, 4)), mask) == pytest.approx(1.0)
    assert probes.attention_ratio(np.zeros((4, 4)), mask) is None
    assert list(probes.attention_subset(5, 3)) == [0, 2, 4]


def test_answered_figures_and_the_worst_missed_by_hand():
    from components.evaluate import right_reason

    out = {
        "probabilities": np.array([[0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0], [0.1, 0.9, 0, 0], [0.7, 0, 0.3, 0]]),
        "refer": np.array([False, True, False, False]),
    }
    f = right_reason.answered_figures(out, np.array([0, 1, 1, 2]))
    assert f["accuracy"] == pytest.approx(0.5) and f["referred"] == pytest.approx(0.25)
    assert f["answered_accuracy"] == pytest.approx(2 / 3)
    assert f["missed_malignancy"]["missed"] == 1 and f["missed_malignancy"]["malignant_images"] == 3
    perturbed = {"a": {"missed_share": 0.1}, "b": {"missed_share": 0.3}, "grayscale": {"missed_share": 0.9}}
    assert right_reason.worst_missed(perturbed, ["a", "b"]) == ("b", 0.3)
    assert right_reason.worst_missed({}, ["a"]) == (None, None)


def test_out_of_fold_benign_recall_reads_the_quick_recipe(tmp_path):
    import json

    from components.evaluate import right_reason

    path = tmp_path / "cv.json"
    path.write_text(
        json.dumps(
            {
                "quick_profile": {"image_size": 192, "views": 1},
                "recipes": {"192px/1v": {"confusion_matrix": [[98, 2, 0, 0], [1, 99, 0, 0], [0] * 4, [0] * 4]}},
            }
        )
    )
    r = right_reason.out_of_fold_benign_recall(path)
    assert (r["correct"], r["images"], r["recall"]) == (98, 100, pytest.approx(0.98))
    assert r["ci"][0] < 0.98 < r["ci"][1]
    assert right_reason.out_of_fold_benign_recall(tmp_path / "missing.json") is None
    with pytest.raises(ValueError, match="no recipe"):
        right_reason.out_of_fold_benign_recall(path, "160px/4v")


def test_context_swapped_training_copies_keep_the_leukocytes_label(tiny_split):
    from components import records
    from components.settings import ModelConfig
    from components.train.cached import context_swapped

    config = ModelConfig("mobilenetv2", image_size=24, context_swap_copies=1, overexposure=0.0)
    batches = list(context_swapped(tiny_split, config, batch=16, seed=3))
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    stored = [e["label"] for e in records.iter_examples(tiny_split / "train")]
    assert images.shape == (len(stored), 24, 24, 3) and 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels.tolist()) == sorted(stored)  # one swapped copy per training image, labelled by its cells
