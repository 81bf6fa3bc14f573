"""The request log: rotation, read-back, since filtering, no identifiers, thread safety."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np

from components.host_features import FEATURE_NAMES
from monitoring.request_log import RequestLog, log_files, read_requests


def _record(i: int, when: datetime | None = None) -> dict:
    rec = {
        "model": "leukemia",
        "version": 1,
        "label": "stable",
        "predicted_label": "Pre",
        "confidences": {"Benign": 0.1, "Early": 0.1, "Pre": np.float32(0.7), "Pro": 0.1},
        "features": {name: float(i) for name in FEATURE_NAMES},
        "filename": "patient-1234.jpg",
        "client": "10.0.0.1",
        "image": b"\xff\xd8jpeg",
    }
    if when is not None:
        rec["timestamp"] = when.isoformat()
    return rec


def test_rotation_and_read_back(tmp_path):
    log = RequestLog(tmp_path, max_bytes=2000, backup_count=3)
    for i in range(40):
        log.append(_record(i))
    files = log_files(tmp_path)
    assert 2 <= len(files) <= 4  # rotated, the oldest beyond backup_count deleted
    assert all(p.stat().st_size <= 2000 for p in files)
    frame = read_requests(tmp_path)
    assert 0 < len(frame) < 40
    # Newest records survive rotation, in order.
    assert frame["brightness_mean"].iloc[-1] == 39.0
    assert frame["brightness_mean"].is_monotonic_increasing
    assert frame["confidence_Pre"].iloc[0] == np.float32(0.7).item()


def test_no_identifiers_and_images_only_when_switched_on(tmp_path):
    RequestLog(tmp_path / "a").append(_record(0))
    line = json.loads((tmp_path / "a" / "requests.jsonl").read_text())
    assert "filename" not in line and "client" not in line and "image_b64" not in line
    assert line["timestamp"].endswith("+00:00")
    RequestLog(tmp_path / "b", store_images=True).append(_record(0))
    line = json.loads((tmp_path / "b" / "requests.jsonl").read_text())
    assert line["image_b64"]


def test_since_filter_and_corrupt_line(tmp_path):
    log = RequestLog(tmp_path)
    now = datetime.now(UTC)
    log.append(_record(1, now - timedelta(hours=30)))
    log.append(_record(2, now - timedelta(minutes=30)))
    with (tmp_path / "requests.jsonl").open("a") as handle:
        handle.write('{"timestamp": "broken')
    assert len(read_requests(tmp_path)) == 2
    recent = read_requests(tmp_path, since=timedelta(hours=24))
    assert list(recent["brightness_mean"]) == [2.0]
    assert read_requests(tmp_path, since=timedelta(seconds=1)).empty
    assert read_requests(tmp_path / "missing").empty


def test_thread_safe_appends(tmp_path):
    log = RequestLog(tmp_path, max_bytes=50_000, backup_count=50)
    threads = [threading.Thread(target=lambda: [log.append(_record(i)) for i in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_requests(tmp_path)) == 200
