"""Session fixtures for the monitoring tests: feature frames of small smear-like images."""

from __future__ import annotations

import pandas as pd
import pytest
from monitor_smears import balanced, feature_frame


@pytest.fixture(scope="session")
def reference_frame() -> pd.DataFrame:
    """The reference: 240 images, 60 per class."""
    return feature_frame(balanced(240), seed=100)


@pytest.fixture(scope="session")
def same_window() -> pd.DataFrame:
    return feature_frame(balanced(80), seed=200)


@pytest.fixture(scope="session")
def bright_window() -> pd.DataFrame:
    """The same kind of images under a lamp 20% brighter."""
    return feature_frame(balanced(80), seed=200, lamp=1.2)


@pytest.fixture(scope="session")
def pro_window() -> pd.DataFrame:
    """Only the class mix changed: nearly all Pro, same lamp and stain."""
    return feature_frame(["Pro"] * 70 + ["Pre"] * 10, seed=300)


@pytest.fixture
def recording_kfp(tmp_path, monkeypatch):
    """kfp.Client replaced by the recording client of test_monitor_trigger; returns (a pipeline package to pass
    as --pipeline-package, the file its calls are recorded in, one JSON line each)."""
    import kfp
    from test_monitor_trigger import RecordingClient

    package = tmp_path / "pipeline.yaml"
    package.write_text("# compiled pipeline\n")
    RecordingClient.calls_file = tmp_path / "calls.jsonl"
    RecordingClient.calls_file.touch()
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return package, RecordingClient.calls_file
