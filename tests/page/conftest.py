"""Page test fixtures: one tiny trained model, exported like the training step exports."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def quadrant_model_dir(tmp_path_factory):
    """`<base>/leukemia/1/`: a tiny model trained to read only the top-left quadrant's patch."""
    from page.tiny_model import export, train_quadrant_model

    version_dir = tmp_path_factory.mktemp("page-models") / "leukemia" / "1"
    return export(train_quadrant_model(), version_dir, threshold=0.6)
