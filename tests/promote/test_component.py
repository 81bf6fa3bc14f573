"""gate_op and promote_op in a real KFP pipeline under the local SubprocessRunner: ParallelFor fan-in, dsl.If."""

import json

import pytest
from fixtures import promote_candidates as H
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Output

from components.promote import registry
from components.promote.gate.component import gate_op
from components.promote.pusher import model_store
from components.promote.pusher.component import promote_op


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def stage_eval_op(src: str, evaluation: Output[Artifact]):
    import shutil

    shutil.copytree(src, evaluation.path)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def stage_split_op(src: str, split: Output[Dataset]):
    import shutil

    shutil.copytree(src, split.path)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def stage_reference_op(reference: Output[Dataset]):
    import os

    import pandas as pd

    os.makedirs(reference.path)
    pd.DataFrame({"brightness_mean": [0.5], "label": ["Benign"]}).to_parquet(reference.path + "/reference.parquet")


@dsl.pipeline(name="promote-test")
def promote_pipeline(candidates: list, split_src: str):
    split = stage_split_op(src=split_src)
    reference = stage_reference_op()
    with dsl.ParallelFor(candidates) as src:
        ev = stage_eval_op(src=src)
    gate = gate_op(evaluations=dsl.Collected(ev.outputs["evaluation"]), split=split.outputs["split"], margin=0.02)
    with dsl.If(gate.outputs["Output"] == True):  # noqa: E712 (KFP condition syntax)
        promote_op(
            gate=gate.outputs["gate"],
            reference=reference.outputs["reference"],
            pipeline_run_id="kfp-local-test",
            drift_report="",
        )


@pytest.mark.slow
def test_gate_and_promote_ops_in_local_pipeline(tmp_path, models, split_dir):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    cands = [
        H.make_candidate(tmp_path / "e", "resnet50", models["good2"], macro_f1=0.97, accuracy=0.97, params=25_600_000),
        H.make_candidate(tmp_path / "e", "mobilenetv2", models["good"], macro_f1=0.96, accuracy=0.96, params=3_400_000),
        H.make_candidate(tmp_path / "e", "cnn", models["worse"], macro_f1=0.72, accuracy=0.79, params=1_000),
    ]
    run = promote_pipeline(candidates=[str(c) for c in cands], split_src=str(split_dir))
    assert model_store.list_versions() == [1] and model_store.read_state().labels == {"stable": 1}
    (v,) = registry.versions()
    assert v["tags"]["model"] == "mobilenetv2" and v["tags"]["pipeline_run_id"] == "kfp-local-test"
    assert v["aliases"] == ["champion"]
    assert (model_store.version_path(1) / "assets.extra" / "reference_features.parquet").is_file()
    del run
    # second run: nothing passes the floors -> gate_op returns False, promote_op is skipped under dsl.If
    promote_pipeline(candidates=[str(cands[2])], split_src=str(split_dir))
    assert model_store.list_versions() == [1] and len(registry.versions()) == 1
    decisions = sorted((tmp_path / "root").rglob("decision.json"), key=lambda p: p.stat().st_mtime)
    last = json.loads(decisions[-1].read_text())
    assert last["promoted"] is False and "no candidate passes the floors" in last["reason"]
    assert not any("promote-op" in str(p) for p in decisions[-1:])
