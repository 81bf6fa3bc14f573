"""The drift monitor's out-of-distribution rate (issue 12): from the request log, against the served model's
`ood_val_referral_rate`, through `leukoflow monitor drift` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from components import domain, home, model_metadata
from monitoring import cli, drift
from monitoring.request_log import RequestLog, read_requests

REFERENCE_RATE = 0.05
runner = CliRunner()


def _served_version(reference_frame, rate: float | None = REFERENCE_RATE) -> None:
    """leukemia/1 where the monitor looks: its reference profile and its metadata (with the OOD rate)."""
    version = home.model_base() / "leukemia" / "1"
    (version / "assets.extra").mkdir(parents=True)
    reference_frame.rename(columns={"class": "label"}).to_parquet(
        version / "assets.extra" / "reference_features.parquet"
    )
    model_metadata.write(
        version,
        model_metadata.ModelMetadata(
            model="cnn", image_size=32, ood_val_referral_rate=rate, ood_threshold=None if rate is None else 100.0
        ),
    )


def _log_window(frame, out_of_distribution: np.ndarray | None) -> None:
    """The window's rows as the server logs them; `outputs` only when the model has the referral outputs."""
    log = RequestLog(home.request_log_dir())
    for i, (_, row) in enumerate(frame.iterrows()):
        record = {
            "model": "leukemia",
            "version": 1,
            "label": "stable",
            "predicted_label": row["class"],
            "confidences": {c: 0.25 for c in domain.CLASS_NAMES},
            "features": {k: float(v) for k, v in row.items() if k != "class"},
        }
        if out_of_distribution is not None:
            ood = bool(out_of_distribution[i])
            record["outputs"] = {"ood_score": 900.0 if ood else 40.0, "in_distribution": not ood, "refer": ood}
        log.append(record)


def _drift(tmp_path) -> tuple[int, dict]:
    result = runner.invoke(
        cli.app, ["drift", "--since", "1h", "--output-dir", str(tmp_path / "report"), "--no-workspace", "--json"]
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return result.exit_code, json.loads(lines[0])


@pytest.fixture
def home_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_window_of_out_of_distribution_images_is_drift(home_dir, reference_frame, same_window, tmp_path):
    _served_version(reference_frame)
    _log_window(same_window, np.ones(len(same_window), bool))  # the colour features have not moved
    code, result = _drift(tmp_path)
    assert code == cli.EXIT_DRIFT, result
    assert result["status"] == "drift" and result["reasons"] == [drift.REASON_OOD]
    assert result["drifted_features"] == []  # not a stain change: only unlike the training images
    assert result["ood_rate"] == 1.0 and result["reference_ood_rate"] == REFERENCE_RATE
    assert any("out-of-distribution rate 100.0%" in m for m in result["moved"])
    saved = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    assert saved["ood"]["p_value"] < drift.OOD_ALPHA and saved["reasons"] == ["ood_rate"]
    assert "Out-of-distribution rate" in (tmp_path / "report" / "report.html").read_text()


def test_a_window_at_the_reference_rate_is_not_drift(home_dir, reference_frame, same_window, tmp_path):
    _served_version(reference_frame)
    flags = np.zeros(len(same_window), bool)
    flags[: round(REFERENCE_RATE * len(same_window))] = True  # 4 of 80: the model's own validation rate
    _log_window(same_window, flags)
    code, result = _drift(tmp_path)
    assert code == 0, result
    assert result["status"] == "no_drift" and result["reasons"] == []
    assert result["ood_rate"] == pytest.approx(flags.mean()) and result["reference_ood_rate"] == REFERENCE_RATE


def test_older_models_and_records_have_no_ood_verdict(home_dir, reference_frame, same_window, tmp_path):
    _served_version(reference_frame, rate=None)
    _log_window(same_window, np.ones(len(same_window), bool))
    code, result = _drift(tmp_path)  # the rate is reported, but there is nothing to compare it with
    assert code == 0 and result["status"] == "no_drift" and result["ood_rate"] == 1.0
    assert result["reference_ood_rate"] is None
    frame = read_requests(home.request_log_dir())
    assert frame["in_distribution"].eq(False).all() and frame["ood_score"].eq(900.0).all()


def test_rate_test_needs_significance_and_a_minimum_rise(same_window):
    window = same_window.copy()
    n = len(window)
    # A small rise over a large reference rate: below OOD_MIN_RISE, however significant.
    window["in_distribution"] = np.arange(n) >= round(0.54 * n)
    ood = drift.out_of_distribution(window, 0.50)
    assert ood["rate"] == pytest.approx(0.5375) and ood["drift"] is False
    # A rise well past the minimum but on too few images to be significant is not drift either.
    few = window.head(10).assign(in_distribution=[False] * 2 + [True] * 8)
    assert drift.out_of_distribution(few, 0.05)["p_value"] > drift.OOD_ALPHA
    assert drift.out_of_distribution(few, 0.05)["drift"] is False
    # No record says whether its image is in distribution: no rate at all.
    assert drift.out_of_distribution(same_window, 0.05)["rate"] is None
    with pytest.raises(ValueError, match="within"):
        drift.out_of_distribution(window, 1.5)
