"""The reliability tests' default server: version 1 of the tiny export, no warmup, default limits.

A test module that needs other limits or another model defines its own `server` fixture, which wins."""

from __future__ import annotations

import pytest
from fixtures.model_base import install_version, start_server


@pytest.fixture(scope="module")
def server(exported_versions, tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability") / "leukemia"
    install_version(exported_versions, base, 1)
    srv = start_server(base, warmup=False)
    yield srv
    srv.stop()
