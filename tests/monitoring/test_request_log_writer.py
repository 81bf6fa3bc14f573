"""The request-log writer (issue 17 item 6): copies numbers, bounded, whole records only, never stops serving."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading

import numpy as np
import pytest

from components.image_features import FEATURE_NAMES, FEATURE_OUTPUTS
from monitoring import request_log
from monitoring.request_log import SKIPPED_LINES, RequestLogWriter, read_requests

pytestmark = pytest.mark.timeout(60)

META = {"model": "leukemia", "version": 3, "label": "stable", "signature": "serving_default", "latency_ms": 2.0}


def _outputs(n: int = 2, extra: bool = True) -> dict:
    out = {
        "probabilities": np.tile(np.array([[0.1, 0.2, 0.6, 0.1]], np.float32), (n, 1)),
        "label": np.array([b"Pre"] * n, dtype=object),
    }
    out.update({name: np.arange(n, dtype=np.float32) + i for i, name in enumerate(FEATURE_OUTPUTS)})
    if extra:
        out["ood_score"] = np.array([0.5] * n, np.float32)
        out["refer"] = np.array([True] * n)
    return out


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_copy_the_response_numbers_and_nothing_identifying(tmp_path):
    import tensorflow as tf

    writer = RequestLogWriter(tmp_path)
    writer.submit(META, _outputs(2), images=[b"\xff\xd8secret", b"\xff\xd8secret"])
    # The proxy hands over the response's TensorProtos; the writer converts them off the request path.
    writer.submit(META, {k: tf.make_tensor_proto(v) for k, v in _outputs(1, extra=False).items()})
    assert writer.flush()
    writer.close()
    records = _lines(tmp_path / "requests.jsonl")
    assert len(records) == 3 and writer.written == 3 and writer.dropped == 0
    first = records[0]
    assert first["predicted_label"] == "Pre" and first["confidences"]["Pre"] == pytest.approx(0.6)
    assert first["features"] == {name: float(i) for i, name in enumerate(FEATURE_NAMES)}
    assert records[1]["features"]["brightness_mean"] == 1.0  # the second image's own numbers
    assert first["outputs"] == {"ood_score": 0.5, "refer": True}
    assert "outputs" not in records[2] and records[2]["features"]["brightness_std"] == 1.0
    assert not any("image_b64" in r or "secret" in json.dumps(r) for r in records)


def test_images_only_when_opted_in(tmp_path):
    writer = RequestLogWriter(tmp_path, store_images=True)
    writer.submit(META, _outputs(1), images=[b"\x89PNGbytes"])
    writer.flush()
    writer.close()
    assert _lines(tmp_path / "requests.jsonl")[0]["image_b64"]


def test_a_stuck_writer_drops_and_counts_never_queues_without_bound(tmp_path):
    drops: list[int] = []
    writer = RequestLogWriter(tmp_path, max_pending=2, on_drop=drops.append)
    writing, release = threading.Event(), threading.Event()
    real = writer._write

    def stuck(items):
        writing.set()
        release.wait(30)
        real(items)

    writer._write = stuck
    writer.submit(META, _outputs(1))
    assert writing.wait(10)
    for _ in range(10):  # 2 fit in the queue, 8 responses of 3 images are dropped at once, without blocking
        writer.submit(META, _outputs(3))
    assert writer.dropped == 24 and sum(drops) == 24 and writer._queue.qsize() == 2
    release.set()
    assert writer.flush()
    writer.close()
    assert len(_lines(tmp_path / "requests.jsonl")) == 1 + 2 * 3


def test_unusable_folder_lets_serving_start_says_so_once_and_recovers(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(request_log, "RETRY_INTERVAL_S", 0.0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="monitoring.request_log"):
        writer = RequestLogWriter(blocker / "requests")  # mkdir fails, even as root
        for _ in range(5):
            writer.submit(META, _outputs(1))
            writer.flush()
    assert writer.dropped == 5
    unusable = [r for r in caplog.records if "unusable" in r.getMessage() and "is unusable (" in r.getMessage()]
    assert len(unusable) == 1
    blocker.unlink()
    writer.submit(META, _outputs(1))
    writer.flush()
    writer.close()
    assert writer.written == 1 and len(_lines(blocker / "requests" / "requests.jsonl")) == 1


def test_full_disk_leaves_whole_records_counts_drops_and_rate_limits_warnings(tmp_path, caplog, monkeypatch):
    writer = RequestLogWriter(tmp_path)
    writer.submit(META, _outputs(1))
    writer.flush()
    real_write = os.write

    def half_then_enospc(fd, data):  # the disk fills in the middle of a record
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(request_log.os, "write", half_then_enospc)
    with caplog.at_level(logging.WARNING, logger="monitoring.request_log"):
        for _ in range(20):
            writer.submit(META, _outputs(2))
            writer.flush()
    monkeypatch.setattr(request_log.os, "write", real_write)
    writer.submit(META, _outputs(1))
    writer.flush()
    writer.close()
    assert writer.dropped == 40 and writer.written == 2
    records = _lines(tmp_path / "requests.jsonl")  # every line parses: the half-written ones were cut back
    assert len(records) == 2
    assert len([r for r in caplog.records if "dropped so far" in r.getMessage()]) == 1  # not one per request


def test_the_monitor_skips_and_counts_a_torn_line(tmp_path):
    writer = RequestLogWriter(tmp_path)
    writer.submit(META, _outputs(3))
    writer.flush()
    writer.close()
    with open(tmp_path / "requests.jsonl", "a") as handle:
        handle.write('{"timestamp": "2026-01-01T00:00:00+00:00", "model": "leuk')  # a crash mid-record
    frame = read_requests(tmp_path)
    assert len(frame) == 3 and frame.attrs[SKIPPED_LINES] == 1


def test_one_file_per_writer_all_read_back(tmp_path):
    for pod in ("a", "b"):
        writer = RequestLogWriter(tmp_path, file_name=f"requests-{pod}.jsonl")
        writer.submit(META, _outputs(2))
        writer.flush()
        writer.close()
    assert len(read_requests(tmp_path)) == 4
    with pytest.raises(ValueError, match="plain name"):
        request_log.RequestLog(tmp_path, file_name="../x.jsonl")
