"""The pipeline trains two models at a time in list order; each profile starts its longest first."""

from __future__ import annotations

import pytest

from components import settings


def test_in_run_order_ranks_by_the_profile_and_keeps_unranked_names_last():
    prof = settings.Profile("p", source_size=32, run_order=("c", "a", "b"))
    assert prof.in_run_order(["a", "b", "c"]) == ["c", "a", "b"]
    assert prof.in_run_order(("b", "a")) == ["a", "b"]
    assert prof.in_run_order(["z", "b", "y", "c"]) == ["c", "b", "z", "y"]


@pytest.mark.parametrize("name", list(settings.PROFILES))
def test_every_profile_orders_exactly_its_own_models(name):
    prof = settings.profile(name)
    assert sorted(prof.run_order) == sorted(prof.models)


def test_quick_starts_mobilenetv2_its_longest_training_first():
    assert settings.profile("quick").in_run_order(list(settings.MODEL_NAMES))[0] == "mobilenetv2"


def test_run_local_hands_the_pipeline_the_models_in_run_order(tmp_path, monkeypatch):
    import pipelines.pipeline
    from pipelines.local import run_local

    started = {}
    monkeypatch.setattr(pipelines.pipeline, "leukoflow_pipeline", lambda **kwargs: started.update(kwargs))
    run_local(tmp_path, profile="quick", pipeline_root=tmp_path / "root", models=["cnn", "resnet50", "mobilenetv2"])
    assert started["models"] == ["mobilenetv2", "cnn", "resnet50"]
    run_local(tmp_path, profile="full", pipeline_root=tmp_path / "root", models=["cnn", "mobilenetv2"])
    assert started["models"] == ["mobilenetv2", "cnn"]
