"""Which models the pipeline starts first (ParallelFor runs two at a time, in list order), and the order reports keep."""

from __future__ import annotations

import json

from components import settings


def test_quick_starts_mobilenetv2_first_and_keeps_the_rest_in_order():
    quick = settings.profile("quick")
    assert quick.training_order(settings.MODEL_NAMES) == ["mobilenetv2", "cnn", "resnet50"]
    assert quick.training_order(["resnet50", "cnn"]) == ["resnet50", "cnn"]  # a subset keeps the caller's order
    assert settings.profile("smoke").training_order(settings.MODEL_NAMES) == list(settings.MODEL_NAMES)


def test_run_local_passes_the_profile_training_order_to_the_pipeline(tmp_path, monkeypatch):
    import pipelines.pipeline
    from pipelines.local import run_local

    monkeypatch.setenv("LEUKOFLOW_HOME", str(tmp_path / "home"))
    seen: dict = {}
    monkeypatch.setattr(pipelines.pipeline, "leukoflow_pipeline", lambda **kwargs: seen.update(kwargs))
    run_local(tmp_path, profile="quick", pipeline_root=tmp_path / "root")
    assert seen["models"] == ["mobilenetv2", "cnn", "resnet50"]


def test_summaries_list_models_in_the_papers_order_whatever_ran_first(tmp_path):
    from pipelines.local import summarize_run

    for i, name in enumerate(("mobilenetv2", "resnet50", "cnn")):
        out = tmp_path / f"for-loop-1-iteration-{i}" / "evaluate-op" / "evaluation"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"model": name, "accuracy": 0.9, "macro_f1": 0.9}))
    assert list(summarize_run(tmp_path)["models"]) == ["cnn", "resnet50", "mobilenetv2"]
