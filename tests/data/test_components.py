"""The four KFP components run under kfp.local's SubprocessRunner (no cluster, no Docker)."""

# No `from __future__ import annotations`: KFP reads the pipeline's real annotations.
import csv
import json

import pytest


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")
def test_data_components_under_kfp_local(synthetic_data, tmp_path):
    from kfp import dsl, local

    from components.dedup.component import dedup_op
    from components.preprocess.component import preprocess_op
    from components.split.component import split_op
    from components.validate.component import validate_op

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    # A component whose inputs are artifacts can run locally only inside a pipeline.
    @dsl.pipeline(name="data-steps")
    def data_steps(data_dir: str):
        validate = validate_op(data_dir=data_dir, min_per_class=10)
        dedup = dedup_op(manifest=validate.outputs["manifest"])
        preprocess = preprocess_op(kept=dedup.outputs["kept"], profile="smoke")
        split_op(kept=dedup.outputs["kept"], preprocessed=preprocess.outputs["shards"], seed=3)

    data_steps(data_dir=synthetic_data["root"])

    root = tmp_path / "root"
    [run] = [p for p in root.iterdir() if p.is_dir()]
    validation = json.loads((run / "validate-op" / "manifest" / "validation.json").read_text())
    assert validation["success"] and sorted(validation["quarantined"]) == sorted(synthetic_data["corrupt"])
    assert "Great Expectations" in (run / "validate-op" / "data_docs").read_text()
    assert "| per_class_minimum_count | yes | pass |" in (run / "validate-op" / "report").read_text()
    dedup = json.loads((run / "dedup-op" / "kept" / "dedup.json").read_text())
    assert dedup["kept"] == sum(synthetic_data["unique_after_dedup"].values()) and len(dedup["conflicts"]) == 1
    assert "Deduplication report" in (run / "dedup-op" / "report").read_text()
    assert json.loads((run / "preprocess-op" / "shards" / "preprocess.json").read_text())["image_size"] == 32
    rows = list(csv.DictReader(open(run / "split-op" / "split" / "split.csv")))
    assert len(rows) == dedup["kept"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert "| total |" in (run / "split-op" / "counts").read_text()
    metrics = json.loads((run / "split-op" / "executor_output.json").read_text())
    assert metrics  # the executor wrote its outputs record


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")
def test_validate_component_fails_on_critical_expectation(synthetic_data, tmp_path, capfd):
    from kfp import local

    from components.validate.component import validate_op

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    with pytest.raises(RuntimeError, match="FAILURE"):
        validate_op(data_dir=synthetic_data["root"], min_per_class=100)
    captured = capfd.readouterr()
    assert "critical expectations failed: per_class_minimum_count" in captured.out + captured.err
