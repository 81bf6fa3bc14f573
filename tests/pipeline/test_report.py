"""`leukoflow report`: docs/results.md and the README's headline from a run's own files (a synthetic run, no training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines import report

CLASSES = ("Benign", "Early", "Pre", "Pro")


def _metrics(model: str, accuracy: float, benign_recall: float) -> dict:
    return {
        "model": model,
        "accuracy": accuracy,
        "accuracy_ci": [accuracy - 0.01, accuracy + 0.005],
        "macro_f1": accuracy - 0.001,
        "macro_f1_ci": [accuracy - 0.012, accuracy + 0.004],
        "per_class": {
            c: {"precision": 0.9, "recall": benign_recall if c == "Benign" else 0.95, "f1": 0.9, "support": 10}
            for c in CLASSES
        },
        "params": 1000,
        "size_bytes": 2_000_000,
        "latency_ms": {"batch1_p50": 5.0, "batch1_p95": 6.0},
        "throughput_b32": 100.0,
        "robustness": {"brightness +15%": accuracy - 0.02, "grayscale": accuracy - 0.03},
        "robustness_worst": accuracy - 0.02,
        "robustness_worst_name": "brightness +15%",
        "referral": {
            "test_referral_rate": 0.0318,
            "ood_referral_rate": 0.0191,
            "set_referral_rate": 0.0149,
            "accepted_accuracy": 0.9934,
            "coverage": 0.9788,
            "coverage_target": 0.98,
            "mean_set_size": 0.985,
            "risk_coverage": [{"referred": 0.0, "accuracy": accuracy}],
        },
        "calibration": {"temperature": 1.0, "ece_before": 0.0116, "ece_after": 0.0116},
        "external": {"choose": {"referred": 1.0}, "report": {"referred": 0.99, "auroc": {"energy": 0.9}}},
    }


def _run(root: Path, name: str, promoted_version: int | None, chosen: str = "mobilenetv2") -> Path:
    """A run directory laid out as the pipeline leaves it: per model metrics.json and train.json, the decisions."""
    run = root / name
    for i, (model, acc, benign) in enumerate((("cnn", 0.9512, 0.9595), ("mobilenetv2", 0.9873, 0.9865))):
        evaluation = run / f"for-loop-1-iteration-{i}" / "evaluate-op" / "evaluation"
        evaluation.mkdir(parents=True)
        (evaluation / "metrics.json").write_text(json.dumps(_metrics(model, acc, benign)))
        trained = run / f"for-loop-1-iteration-{i}" / "train-op" / "trained"
        trained.mkdir(parents=True)
        (trained / "train.json").write_text(json.dumps({"model": model, "profile": "quick", "wall_time_s": 10.0}))
    gate = run / "gate-op" / "gate"
    gate.mkdir(parents=True)
    decision = {"promoted": True, "chosen": chosen, "reason": "passes the floors", "version": None, "label": None}
    (gate / "decision.json").write_text(json.dumps(decision))
    (gate / "decision.md").write_text(f"# Promotion decision\n\n**PROMOTED** — promoted {chosen}: passes the floors\n")
    if promoted_version is not None:
        pushed = run / "promote-op" / "out"
        pushed.mkdir(parents=True)
        decision |= {"version": promoted_version, "label": "stable"}
        (pushed / "decision.json").write_text(json.dumps(decision))
    return run


def test_results_and_headline_come_from_the_run(tmp_path):
    run = _run(tmp_path / "root", "leukoflow-run-a", promoted_version=3)
    output = tmp_path / "docs" / "results.md"
    text = report.render(run, output, hardware="test machine")

    assert output.read_text() == text
    assert "Promoted: **mobilenetv2** as version 3 (label `stable`)." in text
    block = report.headline(text)
    assert block.startswith(report.HEADLINE_START) and block.endswith(report.HEADLINE_END)
    assert "**mobilenetv2**, promoted as version 3" in block and "`leukoflow-run-a`" in block
    assert "| accuracy [95% CI] | 98.73% [97.73, 99.23] |" in block
    assert "| Benign recall | 98.65% |" in block
    assert "| accuracy under the worst plausible stain, lamp or camera change | 96.73% (brightness +15%) |" in block
    assert (
        "| test images referred to a pathologist (unlike training, uncertain) | 3.18% (OOD 1.91%, set 1.49%) |" in block
    )
    assert "| another lab's smears referred (choose / report half) | 100.00% / 99.00% |" in block
    assert "cnn" not in block  # the promoted model only
    assert "doi:10.34740/KAGGLE/DSV/2175623" in block


def test_the_readme_headline_is_replaced_between_its_markers(tmp_path):
    results = report.render(_run(tmp_path / "root", "run", promoted_version=4), tmp_path / "results.md", "test")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{report.HEADLINE_START}\nold table\n{report.HEADLINE_END}\nafter\n")
    report.write_readme_headline(readme, results)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("\nafter\n")
    assert "old table" not in text and report.readme_headline(text) == report.headline(results)

    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no headline markers"):
        report.write_readme_headline(readme, results)


def test_a_run_that_promoted_nothing_says_so(tmp_path):
    run = _run(tmp_path / "root", "run", promoted_version=None)
    (run / "gate-op" / "gate" / "decision.md").write_text(
        "# Promotion decision\n\n**NOT PROMOTED** — no model passes\n"
    )
    text = report.render(run, tmp_path / "results.md", "test")
    assert "Promoted: nothing from this run" in text
    assert "not promoted" in report.headline(text)


def test_latest_run_prefers_the_latest_promoted_one(tmp_path):
    root = tmp_path / "root"
    promoted = _run(root, "older-promoted", promoted_version=2)
    newer = _run(root, "newer-not-promoted", promoted_version=None)
    os.utime(promoted, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    assert report.latest_run(root) == promoted
    assert report.promotion(newer) is None and report.promotion(promoted)["version"] == 2
