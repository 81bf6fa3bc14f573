"""results.md's right-reason section: missed malignancy, magnification, the probes and Benign recall, from metrics.json."""

from __future__ import annotations

from pipelines.report import _right_reason_section


def _metrics() -> dict:
    missed = {
        "malignant_images": 397,
        "missed": 2,
        "missed_share": 2 / 397,
        "missed_share_ci": [0.0014, 0.0182],
        "sensitivity": 395 / 397,
        "sensitivity_ci": [0.9818, 0.9986],
    }
    return {
        "missed_malignancy": missed,
        "missed_malignancy_worst": {"name": "magnification x2", "missed_share": 0.02, "missed": 8},
        "magnification": {
            "magnification x2": {
                "accuracy": 0.67,
                "referred": 0.48,
                "answered_accuracy": 0.63,
                "missed_malignancy": {**missed, "missed": 8},
            }
        },
        "probes": {
            "leukocytes_removed": {"referred": 0.54, "answered_accuracy": 0.972},
            "context_swapped": {"referred": 0.71, "follows_leukocytes": 0.57, "follows_background": 0.33},
            "attention": {"median_ratio": 1.01, "p98_ratio": 1.5},
        },
        "benign_recall": {"recall": 73 / 74, "ci": [0.927, 0.998], "correct": 73, "images": 74},
        "benign_recall_out_of_fold": {
            "recall": 411 / 418,
            "ci": [0.9658, 0.9919],
            "correct": 411,
            "images": 418,
            "source": "recipe_cv_rerun2.json",
            "when": "2026-12-07 19:40 UTC",
        },
    }


def test_the_section_shows_every_figure_with_its_interval():
    text = "\n".join(_right_reason_section({"mobilenetv2": {"metrics": _metrics()}}, ["mobilenetv2"], None))
    assert (
        "| mobilenetv2 | 2 of 397, 0.50% [0.14%, 1.82%] | 99.50% [98.18%, 99.86%] | magnification x2 (2.00%) |" in text
    )
    assert "54.00% / 97.20% | 71.00% / 57.00% / 33.00% | 1.01 (1.50) |" in text
    assert "| magnification x2 | 67.00% / 48.00% / 63.00% / 8 |" in text
    assert "| 73 of 74, 98.65% [92.70%, 99.80%] | 411 of 418, 98.33% [96.58%, 99.19%] (recipe_cv_rerun2.json" in text
    assert "Split grouping: duplicate groups (image-level)" in text


def test_no_section_for_metrics_without_the_figures():
    assert _right_reason_section({"cnn": {"metrics": {"accuracy": 0.9}}}, ["cnn"], None) == []
