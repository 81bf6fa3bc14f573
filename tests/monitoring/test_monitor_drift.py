"""The drift check with real Evidently reports on small smear-like windows."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from monitoring import drift


def test_same_distribution_is_not_drift(reference_frame, same_window, tmp_path):
    summary = drift.run_drift_check(reference_frame, same_window, tmp_path / "r", tmp_path / "ws")
    assert summary["status"] == "no_drift"
    assert summary["drifted_features"] == [] and summary["case_mix_changed"] is False
    assert summary["moved"] == []


@pytest.mark.slow
def test_brighter_lamp_is_drift_with_reports_and_workspace(reference_frame, bright_window, tmp_path):
    summary = drift.run_drift_check(reference_frame, bright_window, tmp_path / "r", tmp_path / "ws")
    assert summary["status"] == "drift"
    assert "brightness_mean" in summary["drifted_features"] or "background_brightness" in summary["drifted_features"]
    assert summary["case_mix_changed"] is False
    # The verdict read from the Evidently report is the decision's (same stat-test function, same data).
    assert set(summary["drifted_features"]) == set(drift.decide(reference_frame, bright_window)["candidate_features"])
    evidently_html = (tmp_path / "r" / "stain.html").read_text()
    assert "brightness_mean" in evidently_html and len(evidently_html) > 10_000  # self-contained Evidently HTML
    front = (tmp_path / "r" / "report.html").read_text()
    assert "Drift check: <span class='drift'>drift</span>" in front and "stain.html" in front
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["summary"]["status"] == "drift"
    tests = saved["evidently"]["stain"]["tests"]
    assert any(t["name"].startswith("Value Drift for column brightness_mean") and t["status"] == "FAIL" for t in tests)
    assert any(t["name"].startswith("Share of Drifted Columns") and t["status"] == "FAIL" for t in tests)
    # The runs are in the workspace `evidently ui` reads.
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(tmp_path / "ws"))
    project = workspace.search_project(drift.PROJECT_NAME)[0]
    assert len(workspace.list_runs(project.id)) == 2


def test_case_mix_change_alone_is_not_stain_drift(reference_frame, pro_window, tmp_path):
    summary = drift.run_drift_check(reference_frame, pro_window, tmp_path / "r", None)
    assert summary["status"] == "no_drift"
    assert summary["case_mix_changed"] is True
    assert summary["case_mix"]["current_share"]["Pro"] > 0.8
    # The pooled features did move (Pro images look different), and the report says the class mix explains it.
    assert len(summary["covariate_drifted_features"]) >= drift.MIN_DRIFTED_FEATURES
    assert "predicted-class mix" in summary["moved"]
    assert any("explained by the class mix" in m for m in summary["moved"])
    front = (tmp_path / "r" / "report.html").read_text()
    assert "Predicted-class mix (changed: True)" in front
    assert summary["within_class"]["Pro"]["tested"] and not summary["within_class"]["Pro"]["drift"]


def test_insufficient_data(reference_frame, same_window, tmp_path):
    summary = drift.run_drift_check(reference_frame, same_window.head(drift.MIN_IMAGES - 1), tmp_path / "r", None)
    assert summary["status"] == "insufficient_data"
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "report.json").exists()


def test_without_labels_compares_pooled(reference_frame, bright_window, same_window):
    assert drift.decide(reference_frame, bright_window.drop(columns=["class"]))["status"] == "drift"
    result = drift.decide(reference_frame.drop(columns=["class"]), same_window.drop(columns=["class"]))
    assert result["status"] == "no_drift" and result["case_mix"] == {"available": False, "changed": False}


def test_threshold_and_duration():
    assert drift.feature_threshold(50) > drift.feature_threshold(200) >= drift.THRESHOLD_FLOOR
    assert drift.feature_threshold(10_000) == drift.THRESHOLD_FLOOR
    assert drift.parse_duration("24h") == timedelta(hours=24)
    assert drift.parse_duration("30m") == timedelta(minutes=30)
    for bad in ("", "24", "h", "-1h", "0h", "3y"):
        with pytest.raises(ValueError):
            drift.parse_duration(bad)
