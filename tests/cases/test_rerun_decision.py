"""Drift that cannot be learnt starts no run; newly committed cases start exactly one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from components.cases import referred, store, versioning
from components.cases.retraining import decide_rerun
from monitoring import alerts, trigger
from tests.cases.conftest import render_jpeg


def test_decide_rerun():
    nothing = decide_rerun(None, None, 3)
    assert not nothing.start and nothing.reason.startswith(
        "3 referred images waiting for review (leukoflow cases queue)"
    )
    assert "no cases committed yet" in nothing.reason
    same = decide_rerun("abc.dir", "abc.dir", 1)
    assert not same.start and same.reason.startswith("1 referred image waiting for review")
    assert "since the last run" in same.reason and same.cases_hash == "abc.dir"
    first = decide_rerun("abc.dir", None, 0)
    assert first.start and first.cases_hash == "abc.dir"
    newer = decide_rerun("def.dir", "abc.dir", 5)
    assert newer.start and "def.dir" in newer.reason
    with pytest.raises(ValueError):
        decide_rerun(None, None, -1)


def _drift(status: str = "drift") -> dict:
    return {"status": status, "images": 200, "report_json": "/r/report.json", "reference": "/ref.parquet"}


def test_trigger_waits_for_committed_cases_then_starts_one_run(dvc_repo, base_data, tmp_path):
    repo, _ = dvc_repo
    cases, kept_dir = repo / "cases", tmp_path / "referred"
    kept = referred.ReferredImages(kept_dir)
    for k in range(2):
        kept.keep(render_jpeg("Pro", 70 + k), {"request_id": f"r{k}", "ood_score": 50.0 + k, "prediction_set": []})
    runs: list[dict] = []
    config = trigger.TriggerConfig(
        data_dir=str(base_data),
        state_file=tmp_path / "state.json",
        cooldown=timedelta(0),
        local_runner=lambda **kw: runs.append(kw) or {"status": "succeeded"},
        cases_dir=str(cases),
        kept_dir=str(kept_dir),
    )
    now = datetime(2026, 12, 1, tzinfo=UTC)

    out = trigger.maybe_trigger(_drift(), config, now=now)
    assert not out["triggered"] and out["reason"].startswith("2 referred images waiting for review")
    out = trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=1))
    assert not out["triggered"] and not runs

    # A pathologist labels one referral; once committed, the next drift verdict starts one run.
    entry = kept.find("r0")
    store.add_cases(
        [store.Candidate(entry["path"], "Pro", "lab-b", source_request_id="r0")], cases, store.base_index(base_data)
    )
    out = trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=2))
    assert not out["triggered"] and out["reason"].startswith("1 referred image waiting")  # added, not committed
    committed = versioning.commit(cases)["hash"]
    out = trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=3))
    assert out["triggered"] and len(runs) == 1
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["last_trigger"]["cases_hash"] == committed
    for hours in (4, 5):  # the same episode never starts another
        assert not trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=hours))["triggered"]

    # A new drift episode on the same committed cases: nothing new to learn, so no run.
    trigger.maybe_trigger(_drift("no_drift"), config, now=now + timedelta(hours=6))
    out = trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=7))
    assert not out["triggered"] and "no cases committed since the last run" in out["reason"] and len(runs) == 1

    # New committed cases: exactly one more run.
    image = tmp_path / "new.jpg"
    image.write_bytes(render_jpeg("Early", 80))
    store.add_cases([store.Candidate(image, "Early", "lab-b")], cases, store.base_index(base_data))
    assert versioning.commit(cases)["hash"] != committed
    assert trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=8))["triggered"]
    assert not trigger.maybe_trigger(_drift(), config, now=now + timedelta(hours=9))["triggered"]
    assert len(runs) == 2


def test_without_a_cases_folder_the_trigger_is_unchanged(tmp_path, base_data):
    runs: list[dict] = []
    config = trigger.TriggerConfig(
        data_dir=str(base_data), state_file=tmp_path / "s.json", local_runner=lambda **kw: runs.append(kw) or {}
    )
    assert trigger.maybe_trigger(_drift(), config)["triggered"] and len(runs) == 1


def test_the_alert_carries_the_review_note():
    note = decide_rerun(None, None, 4).reason
    payload = alerts.summary_payload({**_drift(), "review": note})
    assert payload["review"] == note and payload["text"].endswith(note)
