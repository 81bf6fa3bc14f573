"""Defect 2: limits must be checked before the work they guard (a huge batch used to be built, then refused)."""

from __future__ import annotations

import gc
import socket
import time
import tracemalloc

import grpc
import pytest
import requests
from fixtures.model_base import install_version, start_server

pytestmark = pytest.mark.timeout(120)

INSTANCES = 2_000_000  # one-character strings: an 8 MB body (a 6 MB message), far over max_batch_size


@pytest.fixture(scope="module")
def server(exported_versions, tmp_path_factory):
    from serving.limits import Limits

    base = tmp_path_factory.mktemp("limits") / "leukemia"
    install_version(exported_versions, base, 1)
    srv = start_server(base, warmup=False, limits=Limits(max_message_bytes=64 * 1024 * 1024, max_batch_size=8))
    yield srv
    srv.stop()


def _peak_during(call) -> tuple[float, float, object]:
    """(peak Python memory in MB, seconds, result) of one call; the server runs in this process."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    try:
        result = call()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    return peak, seconds, result


def test_rest_batch_is_refused_while_parsing(server):
    body = b'{"instances": [' + b",".join([b'"x"'] * INSTANCES) + b"]}"
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia:predict"
    peak, seconds, r = _peak_during(lambda: requests.post(url, data=body, timeout=60))
    assert r.status_code == 400 and "max_batch_size=8" in r.json()["error"]
    # Reading the body and decoding it once is all it may cost: not the millions of objects it describes.
    assert peak < 4 * len(body) / 1e6, f"refusing {len(body) / 1e6:.0f} MB cost {peak:.0f} MB"
    assert seconds < 2.0


def _retained_after(call) -> tuple[float, object]:
    """(MB of Python memory still held once a call is over, result), with the garbage collector off: what only a
    collection would free counts as retained, as it does in a server whose collections are rare."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        result = call()
        time.sleep(0.5)  # the server closes its side of the connection
        retained = tracemalloc.get_traced_memory()[0] / 1e6
    finally:
        tracemalloc.stop()
        gc.enable()
    return retained, result


def test_a_refused_body_is_freed_at_once(server):
    # A handler kept the caught error in a local: error -> traceback -> frame -> error, a cycle that held the body
    # and its parse state (100 MB per refused 60 MB body) until a full garbage collection.
    body = b'{"instances": [' + b",".join([b'"x"'] * INSTANCES) + b"]}"
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia:predict"
    retained, r = _retained_after(lambda: requests.post(url, data=body, timeout=60))
    assert r.status_code == 400 and "max_batch_size=8" in r.json()["error"]
    assert retained < len(body) / 1e6 / 8, f"{retained:.1f} MB of a refused {len(body) / 1e6:.0f} MB body is still held"


def test_rest_body_over_the_limit_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/leukemia:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400") and b"max_message_bytes" in answer


def test_grpc_batch_is_refused_from_the_tensor_shape(server):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": INSTANCES}])
    )
    tensor.string_val.extend([b"x"] * INSTANCES)

    def request(model: str):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.inputs["images"].CopyFrom(tensor)
        return req

    with grpc.insecure_channel(
        f"127.0.0.1:{server.grpc_port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(req):
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(req, timeout=60)
            return info.value

        unknown, known = request("nope"), request("leukemia")
        # What moving the message costs (both sides in this process): an unknown model is refused at once.
        transport, _, err = _peak_during(lambda: call(unknown))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        peak, _, err = _peak_during(lambda: call(known))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size=8" in err.details()
    assert peak < transport * 1.3 + 2, f"refusing the tensor cost {peak:.0f} MB; moving it {transport:.0f} MB"
