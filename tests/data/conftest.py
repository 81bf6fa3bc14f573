"""The data steps run once per session on the synthetic set; tests read their outputs (and never write to them)."""

from __future__ import annotations

import pytest

# The synthetic set has 12 clean images per class; the real data's minimum (20) is for the real data.
MIN_PER_CLASS = 10


@pytest.fixture(scope="session")
def validated(synthetic_data, tmp_path_factory) -> dict:
    from components.validate.executor import run_validate

    out = tmp_path_factory.mktemp("validate")
    return run_validate(synthetic_data["root"], out, min_per_class=MIN_PER_CLASS)


@pytest.fixture(scope="session")
def deduped(validated, tmp_path_factory) -> dict:
    from components.dedup.executor import run_dedup

    return run_dedup(validated["manifest"], tmp_path_factory.mktemp("dedup"))


@pytest.fixture(scope="session")
def preprocessed(deduped, tmp_path_factory) -> dict:
    from components.preprocess.executor import run_preprocess

    out = tmp_path_factory.mktemp("preprocess")
    result = run_preprocess(deduped["kept_csv"], out, image_size=16, num_shards=3)
    result["dir"] = str(out)
    return result


@pytest.fixture(scope="session")
def split_result(deduped, preprocessed, tmp_path_factory) -> dict:
    from components.split.executor import run_split

    out = tmp_path_factory.mktemp("split")
    result = run_split(deduped["kept_csv"], preprocessed["dir"], out, seed=7, num_shards=2)
    result["dir"] = str(out)
    return result
