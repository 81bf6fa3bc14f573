"""A request's deadline bounds its work: a large request runs in slices, and stops between them once its
deadline has passed or its caller has gone (gRPC cancelled, REST connection closed).

The tiny model scores a slice in milliseconds, faster than any deadline can be timed, so the served model's
`run_prepared` is wrapped: it records every model run (rows, and whether the request's deadline had passed when
it started) and holds the request's first slice until the deadline has passed or the caller has gone. What is
asserted are counts (slices and images run, the server's counters), never wall time.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from fixtures.images import encode_png, sample_image
from fixtures.model_base import install_version

pytestmark = pytest.mark.timeout(120)

SLICE = 8
LARGE = 256


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [encode_png(sample_image(i)) for i in range(LARGE)]


class RunRecorder:
    """Wraps a servable's run_prepared in the server: records each model run, holds a large request's first slice."""

    def __init__(self, core, servable) -> None:
        self.core, self.servable = core, servable
        self.real = servable.run_prepared
        self.runs: list[int] = []  # rows of each model run, in order
        self.started_late: list[bool] = []  # the request's deadline had passed when the run started
        self.first_slice = threading.Event()
        self.hold_until = None  # "deadline" or "gone": how long a large request's first slice is held
        servable.run_prepared = self.run

    def run(self, signature_name, inputs):
        rows = len(next(iter(inputs.values())))
        deadline = getattr(self.core.local, "deadline", None)
        self.started_late.append(deadline is not None and time.monotonic() >= deadline)
        self.runs.append(rows)
        if self.hold_until and not self.first_slice.is_set() and rows > 1:
            self.first_slice.set()
            limit = time.monotonic() + 20
            alive = getattr(self.core.local, "alive", None)
            while time.monotonic() < limit:  # as a slow model would: the slice outlives the deadline / the caller
                if self.hold_until == "deadline" and deadline is not None and time.monotonic() > deadline + 0.05:
                    break
                if self.hold_until == "gone" and alive is not None and not alive():
                    break
                time.sleep(0.01)
        return self.real(signature_name, inputs)

    def restore(self) -> None:
        self.servable.run_prepared = self.real


@pytest.fixture
def recorder(server):
    rec = RunRecorder(server.core, server.core.resolve("leukemia"))
    yield rec
    rec.restore()


def _counter(core, name: str, reason: str) -> float:
    """A counter's value, or for stopped_request_images the images scored for requests that stopped (its sum)."""
    sample = f"leukoflow_serving_{name}_sum" if name == "stopped_request_images" else f"leukoflow_serving_{name}_total"
    return core.metrics.registry.get_sample_value(sample, {"reason": reason}) or 0.0


def _wait_for(condition, seconds: float = 20.0) -> None:
    limit = time.monotonic() + seconds
    while not condition() and time.monotonic() < limit:
        time.sleep(0.01)
    assert condition(), "the server did not stop the request"


def _predict_request(images: list[bytes]):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "leukemia"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def _stub(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_expired_large_request_stops_after_one_slice_and_the_next_request_runs(server, recorder, images):
    core = server.core
    assert core.slice_size == SLICE  # the default without batching
    skipped, stopped = (
        _counter(core, "slices_skipped", "deadline"),
        _counter(core, "stopped_request_images", "deadline"),
    )
    recorder.hold_until = "deadline"
    channel, stub = _stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_predict_request(images), timeout=2.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for(lambda: _counter(core, "slices_skipped", "deadline") > skipped)
        assert recorder.runs == [SLICE], f"model runs for the expired request: {recorder.runs}"
        assert recorder.started_late == [False], "a slice started after the deadline had passed"
        assert _counter(core, "slices_skipped", "deadline") - skipped == LARGE // SLICE - 1
        assert _counter(core, "stopped_request_images", "deadline") - stopped == SLICE
        answer = stub.Predict(_predict_request(images[:1]), timeout=30)
    assert recorder.runs == [SLICE, 1]
    assert [d.size for d in answer.outputs["probabilities"].tensor_shape.dim] == [1, 4]


def test_grpc_request_cancelled_by_its_client_stops_within_one_slice(server, recorder, images):
    core = server.core
    skipped = _counter(core, "slices_skipped", "cancelled")
    recorder.hold_until = "gone"
    channel, stub = _stub(server)
    with channel:
        future = stub.Predict.future(_predict_request(images), timeout=60)
        assert recorder.first_slice.wait(30)
        future.cancel()
        _wait_for(lambda: _counter(core, "slices_skipped", "cancelled") > skipped)
    assert recorder.runs == [SLICE]
    assert _counter(core, "slices_skipped", "cancelled") - skipped == LARGE // SLICE - 1
    assert _counter(core, "slices_skipped", "deadline") >= 0  # the series exists from the start


def test_rest_request_whose_connection_closes_stops_within_one_slice(server, recorder, images):
    core = server.core
    skipped = _counter(core, "slices_skipped", "cancelled")
    stopped = _counter(core, "stopped_request_images", "cancelled")
    recorder.hold_until = "gone"
    body = json.dumps({"instances": [{"b64": base64.b64encode(x).decode()} for x in images]}).encode()
    head = (
        f"POST /v1/models/leukemia:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
    try:
        sock.sendall(head + body)
        assert recorder.first_slice.wait(30)
    finally:
        sock.close()  # the client gives up while the first slice runs
    _wait_for(lambda: _counter(core, "slices_skipped", "cancelled") > skipped)
    assert recorder.runs == [SLICE]
    assert _counter(core, "slices_skipped", "cancelled") - skipped == LARGE // SLICE - 1
    assert _counter(core, "stopped_request_images", "cancelled") - stopped == SLICE
    metrics = server.core.metrics.render().decode()
    assert 'leukoflow_serving_slices_skipped_total{reason="cancelled"}' in metrics


def _core(exported_versions, tmp_path, batcher=None, slice_size=None):
    from serving.limits import Limits
    from serving.manager import ModelEntry, ModelManager
    from serving.metrics import Metrics
    from serving.server import ServingCore

    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    manager = ModelManager([ModelEntry("leukemia", base)], warmup=False)
    manager.start()
    return ServingCore(manager, Limits(), Metrics(), batcher=batcher, slice_size=slice_size)


@pytest.mark.parametrize("batching", [False, True])
def test_a_sliced_request_answers_as_one_run_in_order(exported_versions, tmp_path, images, batching):
    from serving.batching import Batcher, BatchingParameters

    batcher = Batcher(BatchingParameters(max_batch_size=32, num_batch_threads=2)) if batching else None
    core = _core(exported_versions, tmp_path, batcher, slice_size=SLICE)
    servable = core.resolve("leukemia")
    rows: list[int] = []
    real = servable.run_prepared
    servable.run_prepared = lambda sig, x: (rows.append(len(x["images"])), real(sig, x))[1]
    batch = {"images": np.array(images[:20], dtype=object)}
    core.set_deadline(30)
    try:
        sliced = core.execute(servable, "serving_default", batch)["probabilities"]
    finally:
        if batcher is not None:
            batcher.stop()
    assert rows == [8, 8, 4]
    whole = real("serving_default", servable.prepare("serving_default", batch))["probabilities"]
    np.testing.assert_allclose(sliced, whole, rtol=1e-5, atol=1e-6)


def test_the_batch_queue_drops_the_slice_of_an_expired_request(exported_versions, tmp_path, images):
    """A slice waiting in the batch queue when its request's deadline passes is dropped, and no later slice is
    submitted: of a 32-image request only the blocker ran."""
    from serving.batching import Batcher, BatchingParameters
    from serving.errors import ServingError

    batcher = Batcher(
        BatchingParameters(max_batch_size=32, num_batch_threads=1, enable_large_batch_splitting=True,
                           max_execution_batch_size=SLICE)
    )  # fmt: skip
    core = _core(exported_versions, tmp_path, batcher)
    assert core.slice_size == SLICE  # the batch size that runs
    servable = core.resolve("leukemia")
    rows: list[int] = []
    real = servable.run_prepared
    servable.run_prepared = lambda sig, x: (rows.append(len(x["images"])), real(sig, x))[1]
    release, ran = threading.Event(), []

    def blocker(x: dict) -> dict:
        ran.append("blocker")
        release.wait(30)  # the one batch thread is busy
        return x

    thread = threading.Thread(target=lambda: batcher.submit("other", {"x": np.zeros((1, 1))}, blocker))
    thread.start()
    try:
        _wait_for(lambda: ran == ["blocker"])
        core.set_deadline(0.3)
        with pytest.raises(ServingError) as info:
            core.execute(servable, "serving_default", {"images": np.array(images[:32], dtype=object)})
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        thread.join(30)
        core.set_deadline(30)  # the next request: the batch thread takes it after dropping the expired slice
        core.execute(servable, "serving_default", {"images": np.array(images[:1], dtype=object)})
    finally:
        release.set()
        batcher.stop()
    assert rows == [1], "a slice of the expired request ran"
    assert _counter(core, "slices_skipped", "deadline") == 32 // SLICE
    assert _counter(core, "stopped_request_images", "deadline") == 0
