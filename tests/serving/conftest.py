"""Serving fixtures: tiny exported model versions shared by the serving tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from tiny_model import export_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def exported_versions(tmp_path_factory) -> dict[int, Path]:
    """Three exported versions of the tiny model (differing outputs), to copy into model bases. Read-only."""
    root = tmp_path_factory.mktemp("exports")
    return {v: export_tiny_model(root / str(v), shift=float(v - 1)) for v in (1, 2, 3)}
