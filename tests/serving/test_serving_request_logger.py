"""The server's request logger: features from the image bytes, off the request path, with bounded memory."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from tiny_model import encode_png, sample_image

pytestmark = pytest.mark.timeout(60)


def _record(image: bytes) -> dict:
    return {"model": "leukemia", "version": 1, "label": None, "signature": "serving_default", "latency_ms": 1.0,
            "_rgb": None, "_encoded": image, "_probs": np.array([0.1, 0.2, 0.3, 0.4]), "image": None}


def _wait_for_lines(path, n: int) -> list[dict]:
    deadline = time.time() + 20
    while time.time() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {n} records")


def test_features_come_from_the_encoded_image(tmp_path):
    from components import domain
    from components.host_features import image_features
    from serving.server import RequestLogger

    image = encode_png(sample_image(2))
    logger = RequestLogger(tmp_path)
    logger.submit(_record(image))
    (record,) = _wait_for_lines(tmp_path / "requests.jsonl", 1)
    logger.close()
    assert record["features"] == pytest.approx(image_features(domain.load_rgb(image)))
    assert record["predicted_label"] == "Pro" and "_encoded" not in record


def test_pending_image_bytes_are_bounded_and_drops_counted(tmp_path):
    """While the writer is stuck, records beyond max_pending_bytes are dropped, never held."""
    from serving.server import RequestLogger

    drops: list[int] = []
    image = encode_png(sample_image(1))
    # The budget holds one image, not two.
    logger = RequestLogger(tmp_path, max_pending_bytes=len(image) * 3 // 2, on_drop=lambda: drops.append(1))
    writing, release = threading.Event(), threading.Event()
    real_append = logger._log.append

    def stuck_append(record: dict) -> None:
        writing.set()
        release.wait(30)
        real_append(record)

    logger._log.append = stuck_append
    logger.submit(_record(image))  # taken by the writer, which then blocks
    assert writing.wait(20)
    logger.submit(_record(image))  # waits in the queue: counted against the budget
    logger.submit(_record(image))  # over the budget: dropped
    assert logger.dropped == 1 and drops == [1]
    release.set()
    assert len(_wait_for_lines(tmp_path / "requests.jsonl", 2)) == 2
    logger.submit(_record(image))  # the budget is free again once the queue drained
    assert len(_wait_for_lines(tmp_path / "requests.jsonl", 3)) == 3
    assert logger.dropped == 1
    logger.close()
