"""Defect 3: deadlines must stop work (expired requests used to run anyway, and delay the next one)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from fixtures.images import encode_png, sample_image
from fixtures.model_base import install_version

pytestmark = pytest.mark.timeout(120)


def test_expired_requests_leave_the_batch_queue_and_never_run():
    from serving.batching import Batcher, BatchingParameters
    from serving.errors import ServingError

    ran: list[str] = []
    release = threading.Event()
    batcher = Batcher(
        BatchingParameters(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=100, num_batch_threads=1)
    )

    def runner(tag: str):
        def run(x: dict) -> dict:
            ran.append(tag)
            if tag == "blocker":
                release.wait(30)  # the one batch thread is busy, as under a burst of slow requests
            return x

        return run

    blocker = threading.Thread(target=lambda: batcher.submit("k", {"x": np.zeros((1, 1))}, runner("blocker")))
    blocker.start()
    while not ran:
        time.sleep(0.01)
    codes: list = []

    def expiring(i: int) -> None:
        try:
            batcher.submit("k", {"x": np.zeros((1, 1))}, runner(f"expired-{i}"), timeout=0.2)
        except ServingError as exc:
            codes.append(exc.code)

    clients = [threading.Thread(target=expiring, args=(i,)) for i in range(16)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(30)
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 16
    release.set()
    blocker.join(30)
    start = time.perf_counter()
    batcher.submit("k", {"x": np.zeros((1, 1))}, runner("next"), timeout=10)
    waited = time.perf_counter() - start
    batcher.stop()
    assert ran == ["blocker", "next"], "requests whose deadline had passed were still run"
    assert waited < 1.0


def test_a_batch_whose_callers_all_left_is_not_started():
    from serving.batching import Batcher, BatchingParameters
    from serving.errors import ServingError

    ran: list[int] = []
    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1))
    with pytest.raises(ServingError) as info:  # the caller's RPC is cancelled while the batch forms
        batcher.submit(
            "k", {"x": np.zeros((2, 1))}, lambda x: (ran.append(len(x["x"])), x)[1], timeout=5, alive=lambda: False
        )
    batcher.stop()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ran == []


def test_unbatched_request_past_its_deadline_is_not_run(exported_versions, tmp_path):
    from serving.errors import ServingError
    from serving.limits import Limits
    from serving.manager import ModelEntry, ModelManager
    from serving.metrics import Metrics
    from serving.server import ServingCore

    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    manager = ModelManager([ModelEntry("leukemia", base)], warmup=False)
    manager.start()
    metrics = Metrics()
    core = ServingCore(manager, Limits(), metrics)
    servable = core.resolve("leukemia")
    images = {"images": np.array([encode_png(sample_image(1))], dtype=object)}

    def scored() -> float:
        return (
            metrics.registry.get_sample_value("leukoflow_serving_images_total", {"model": "leukemia", "version": "1"})
            or 0.0
        )

    core.set_deadline(0.05)
    time.sleep(0.1)  # the request waited (for a handler thread, say) until its deadline passed
    with pytest.raises(ServingError) as info:
        core.execute(servable, "serving_default", images)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert scored() == 0.0, "the model ran for a caller whose deadline had passed"
    core.set_deadline(10)
    assert core.execute(servable, "serving_default", images)["probabilities"].shape == (1, 4)
    assert scored() == 1.0
