"""Reliability suite (issue 17): one fast test per defect found by abusing the server on loopback.

Shares the serving tests' tiny model and helpers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SERVING_TESTS = Path(__file__).resolve().parent.parent / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVING_TESTS))

from tiny_model import export_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def exported_versions(tmp_path_factory) -> dict[int, Path]:
    """Two exported versions of the tiny model (read-only; copy them into a model base)."""
    root = tmp_path_factory.mktemp("reliability-exports")
    return {v: export_tiny_model(root / str(v), shift=float(v - 1)) for v in (1, 2)}


@pytest.fixture(scope="session")
def quadrant_model_dir(tmp_path_factory):
    """`<base>/leukemia/1/`: the page tests' tiny trained model, with the Keras model Grad-CAM needs."""
    from page.tiny_model import export, train_quadrant_model

    version_dir = tmp_path_factory.mktemp("reliability-page") / "leukemia" / "1"
    return export(train_quadrant_model(), version_dir, threshold=0.6)
