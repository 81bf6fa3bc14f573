"""run_promote end to end on a real sqlite registry, a real model store and real SavedModels."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from fixtures import promote_candidates as H
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components import home
from components.promote import executor, registry
from components.promote.gate import infra_validation
from components.promote.gate.executor import split_hash
from components.promote.pusher import model_store


def _cands(tmp_path, models, **specs):
    """specs: model name -> (saved model key, macro_f1, params)."""
    out = []
    for name, (key, f1, params) in specs.items():
        out.append(H.make_candidate(tmp_path / "evals", name, models[key], macro_f1=f1, accuracy=f1, params=params))
    return out


def _config():
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(home.models_config_path().read_text(), config)
    return config


def test_first_promotion_writes_store_config_and_registry(tmp_path, models, split_dir):
    cands = _cands(
        tmp_path,
        models,
        resnet50=("good2", 0.97, 25_600_000),
        mobilenetv2=("good", 0.96, 3_400_000),
        cnn=("worse", 0.72, 1_000_000),
    )
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    pd.DataFrame({"brightness_mean": [0.5, 0.6], "label": ["Benign", "Pre"]}).to_parquet(ref_dir / "reference.parquet")
    res = executor.run_promote(
        cands,
        tmp_path / "out",
        split_dir,
        pipeline_run_id="run-1",
        reference=ref_dir,
        drift_report="/reports/drift-1.json",
    )
    assert res["promoted"] and res["chosen"] == "mobilenetv2" and res["version"] == 1, res["summary"]
    # model store: a complete version named by models.config, carrying the drift reference for the monitor
    vdir = home.model_base() / "leukemia" / "1"
    assert (vdir / "saved_model.pb").is_file() and res["model_path"] == str(vdir)
    assert pd.read_parquet(vdir / "assets.extra" / "reference_features.parquet")["label"].tolist() == ["Benign", "Pre"]
    entry = _config().model_config_list.config[0]
    assert list(entry.model_version_policy.specific.versions) == [1] and dict(entry.version_labels) == {"stable": 1}
    # decision and card
    md = (tmp_path / "out" / "decision.md").read_text()
    assert "PROMOTED" in md and "| cnn | 0.7200" in md and "Infra validation" in md
    card = (tmp_path / "out" / "model_card.md").read_text()
    assert "10.34740/KAGGLE/DSV/2175623" in card and "not a diagnosis" in card and "patient IDs" in card
    assert "Low-confidence threshold: 0.60" in card and "| Benign | 0.9000 | 0.9000 |" in card
    assert "Malignant test images answered Benign and not referred: 0 of 9 (0.00%)" in card
    # registry, read back through a fresh client on the same sqlite file
    assert registry.get_aliases() == {"champion": 1}
    (v,) = registry.versions()
    tags = v["tags"]
    assert tags["model"] == "mobilenetv2" and tags["pipeline_run_id"] == "run-1" and tags["status"] == "promoted"
    assert tags["split_hash"] == split_hash(split_dir) and tags["data_hash"].endswith(".dir")
    assert tags["model_card"].endswith("model_card.md") and "promoted mobilenetv2" in tags["gate_decision"]
    assert tags["drift_report"] == "/reports/drift-1.json"
    assert tags["reference_profile"] == str(vdir / "assets.extra" / "reference_features.parquet")
    c = registry.client()
    run = c.get_run(v["run_id"])
    assert run.data.metrics["macro_f1"] == pytest.approx(0.96)
    assert run.data.metrics["per_class.Benign.recall"] == pytest.approx(0.9)
    assert run.data.metrics["robustness.brightnessplus15pct"] == pytest.approx(0.97)
    assert run.data.metrics["calibration.ece_after"] == pytest.approx(0.015)
    assert run.data.params["config.image_size"] == str(H.SIZE)
    assert run.data.tags["git_commit"]
    arts = {a.path for a in c.list_artifacts(v["run_id"])}
    assert {"saved_model", "model_card.md", "decision.md", "reference.parquet"} <= arts
    assert v["source"].endswith("/saved_model")
    with sqlite3.connect(home.home() / "mlflow.db") as db:  # really on the sqlite file
        assert db.execute("select count(*) from model_versions").fetchone()[0] == 1
    # registry list joins the registry with models.config
    (row,) = executor.list_models()
    assert row["version"] == 1 and row["aliases"] == ["champion"] and row["label"] == "stable"
    assert row["macro_f1"] == pytest.approx(0.96) and row["accuracy"] == pytest.approx(0.96)
    assert row["model_path"] == str(vdir)


def test_regression_vs_champion_and_rollback(tmp_path, models, split_dir, other_split_dir, monkeypatch):
    first = executor.run_promote(
        _cands(tmp_path / "a", models, mobilenetv2=("good", 0.96, 3_400_000)), tmp_path / "o1", split_dir
    )
    assert first["version"] == 1
    # same split: recorded figures; 0.94 is 0.02 below the champion -> not promoted
    res = executor.run_promote(
        _cands(tmp_path / "b", models, resnet50=("good2", 0.94, 25_600_000)), tmp_path / "o2", split_dir
    )
    assert not res["promoted"] and res["summary"].startswith("not promoted because") and "regresses" in res["summary"]
    assert model_store.list_versions() == [1] and len(registry.versions()) == 1
    # same model again: identical to the champion
    res = executor.run_promote(
        _cands(tmp_path / "c", models, mobilenetv2=("good", 0.96, 3_400_000)), tmp_path / "o3", split_dir
    )
    assert not res["promoted"] and "identical to the champion" in res["summary"]
    # a different split: both re-evaluated through serving; the 'worse' model claims 0.99 but is worse
    res = executor.run_promote(
        _cands(tmp_path / "d", models, cnn=("worse", 0.99, 1_000)), tmp_path / "o4", other_split_dir
    )
    assert not res["promoted"] and "regresses" in res["summary"], res["summary"]
    decision = json.loads((tmp_path / "o4" / "decision.json").read_text())
    assert "re-evaluated" in decision["regression"]["cnn"]["measured_on"]
    assert decision["regression"]["cnn"]["champion_f1"] == pytest.approx(1.0)
    assert decision["regression"]["cnn"]["candidate_f1"] < 0.9
    # a real improvement on a different split is promoted, then rolled back
    res = executor.run_promote(
        _cands(tmp_path / "e", models, resnet50=("good2", 0.97, 25_600_000)),
        tmp_path / "o5",
        other_split_dir,
        label="stable",  # at once, not through the canary
    )
    assert res["promoted"] and res["version"] == 2, res["summary"]
    assert model_store.read_state().labels == {"stable": 2} and registry.get_aliases()["champion"] == 2
    # a rollback whose registry write fails leaves models.config and the aliases as they were
    config_before = home.models_config_path().read_bytes()
    real = registry.assign_label

    def broken(*a, **k):
        raise RuntimeError("registry down")

    monkeypatch.setattr(registry, "assign_label", broken)
    with pytest.raises(executor.PromotionError, match="previous state kept"):
        executor.rollback()
    monkeypatch.setattr(registry, "assign_label", real)
    assert home.models_config_path().read_bytes() == config_before and registry.get_aliases()["champion"] == 2
    back = executor.rollback()
    assert back["version"] == 1 and back["rolled_back_from"] == 2
    assert model_store.read_state().labels == {"stable": 1} and registry.get_aliases()["champion"] == 1
    assert dict(_config().model_config_list.config[0].version_labels) == {"stable": 1}
    with pytest.raises(ValueError, match="no previous champion"):
        executor.rollback()
    # manual steps: canary, then stable
    executor.promote_version(2, "canary")
    assert model_store.read_state().labels == {"stable": 1, "canary": 2}
    assert registry.get_aliases() == {"champion": 1, "challenger": 2}
    executor.promote_version(2, "stable")
    assert model_store.read_state().labels == {"stable": 2} and registry.get_aliases() == {"champion": 2}


def test_the_gate_promotes_to_canary_once_something_is_stable(tmp_path, models, split_dir, other_split_dir):
    first = executor.run_promote(
        _cands(tmp_path / "a", models, mobilenetv2=("good", 0.96, 3_400_000)), tmp_path / "o1", split_dir
    )
    assert first["label"] == "stable" and model_store.read_state().labels == {"stable": 1}  # nothing to compare with
    res = executor.run_promote(
        _cands(tmp_path / "b", models, resnet50=("good2", 0.97, 25_600_000)), tmp_path / "o2", other_split_dir
    )
    assert res["promoted"] and res["version"] == 2 and res["label"] == "canary", res["summary"]
    state = model_store.read_state()
    assert state.labels == {"stable": 1, "canary": 2} and state.versions == [1, 2]  # loaded beside, stable unchanged
    assert registry.get_aliases() == {"champion": 1, "challenger": 2}
    assert json.loads((tmp_path / "o2" / "decision.json").read_text())["label"] == "canary"


@pytest.mark.parametrize(
    "target",
    [
        (registry, "create_version"),
        (model_store, "_copy_pb"),
        (model_store, "_replace_config"),
        (registry, "assign_label"),
    ],
    ids=lambda t: t[1],
)
def test_failed_promotion_keeps_old_state_everywhere(tmp_path, models, split_dir, monkeypatch, target):
    executor.run_promote(
        _cands(tmp_path / "a", models, mobilenetv2=("good", 0.96, 3_400_000)), tmp_path / "o1", split_dir
    )
    config_before = home.models_config_path().read_bytes()
    module, name = target
    real = getattr(module, name)
    calls = {"n": 0}

    def fail_once(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1 or name == "_replace_config" and calls["n"] == 2:
            if name == "_replace_config" and calls["n"] == 1:
                return real(*a, **k)  # let step 1 land, fail step 2
            raise RuntimeError(f"injected failure in {name}")
        return real(*a, **k)

    monkeypatch.setattr(module, name, fail_once)
    with pytest.raises(executor.PromotionError, match="previous state"):
        executor.run_promote(
            _cands(tmp_path / "b", models, resnet50=("good2", 0.97, 3_000_000)), tmp_path / "o2", split_dir
        )
    monkeypatch.setattr(module, name, real)
    assert model_store.list_versions() == [1]
    assert not [p for p in (home.model_base() / "leukemia").iterdir() if p.name.startswith(model_store.TMP_PREFIX)]
    assert home.models_config_path().read_bytes() == config_before
    assert [v["version"] for v in registry.versions()] == [1]
    assert registry.get_aliases() == {"champion": 1} and registry.champion_history() == [1]
    # and the next promotion works
    res = executor.run_promote(
        _cands(tmp_path / "c", models, resnet50=("good2", 0.97, 3_000_000)), tmp_path / "o3", split_dir
    )
    assert res["promoted"] and model_store.read_state().labels == {"stable": 1, "canary": res["version"]}
    assert registry.get_aliases() == {"champion": 1, "challenger": res["version"]}
    assert res["version"] in model_store.list_versions()


@pytest.mark.parametrize("key, reason", [("broken", "do not sum to 1"), ("nowarmup", "no warmup records")])
def test_infra_validation_rejects_broken_models(tmp_path, models, split_dir, key, reason):
    res = executor.run_promote(_cands(tmp_path, models, mobilenetv2=(key, 0.96, 3_400_000)), tmp_path / "o", split_dir)
    assert not res["promoted"] and "failed infra validation" in res["summary"] and reason in res["summary"]
    assert model_store.list_versions() == [] and registry.versions() == []
    assert not home.models_config_path().exists()


def test_infra_validation_passes_good_model(models, split_dir):
    images = infra_validation.test_images(split_dir, 4)
    result = infra_validation.validate(models["good"], images)
    assert result["ok"], result
    assert any("classify scores match" in c for c in result["checks"]) and result["warmup_records"] == 1


def test_nothing_passes_floors(tmp_path, models, split_dir):
    res = executor.run_promote(_cands(tmp_path, models, cnn=("good", 0.72, 1_000)), tmp_path / "o", split_dir)
    assert res["summary"].startswith("not promoted because no candidate passes the floors")
    assert "NOT PROMOTED" in (tmp_path / "o" / "decision.md").read_text()


def test_bad_candidate_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        executor.run_promote([tmp_path / "nope"], tmp_path / "o")
