"""The proxy's gRPC relay and its passive HTTP/2 tap (monitoring/grpc_tap.py).

The tap is fed frames written by hyperframe/hpack the way any HTTP/2 peer may write them (interleaved
streams, header blocks split over CONTINUATION frames, padding, compressed messages, trailers-only
errors, cancelled streams), cut into arbitrary chunks; the relay is driven by real gRPC clients.
"""

from __future__ import annotations

import gzip
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from monitoring.grpc_tap import PREFACE, GrpcRelay, Http2Tap, TapError

pytestmark = pytest.mark.timeout(120)


def _grpc(message: bytes, compressed: bool = False) -> bytes:
    body = gzip.compress(message) if compressed else message
    return bytes([1 if compressed else 0]) + len(body).to_bytes(4, "big") + body


def _flag(frame, name: str, on) -> None:
    if on:
        frame.flags.add(name)


class _Peer:
    """Writes one direction of a connection: frames with an HPACK encoder of its own."""

    def __init__(self) -> None:
        import hpack

        self.encoder = hpack.Encoder()

    def headers(
        self, stream_id: int, headers: list, end_stream: bool = False, split: int = 0, padding: int = 0
    ) -> bytes:
        from hyperframe.frame import ContinuationFrame, HeadersFrame

        block = self.encoder.encode(headers)
        first, rest = (block[:split], block[split:]) if split else (block, b"")
        frame = HeadersFrame(stream_id, data=first, pad_length=padding)
        _flag(frame, "END_STREAM", end_stream)
        _flag(frame, "PADDED", padding)
        if not rest:
            frame.flags.add("END_HEADERS")
            return frame.serialize()
        more = ContinuationFrame(stream_id, data=rest)
        more.flags.add("END_HEADERS")
        return frame.serialize() + more.serialize()

    @staticmethod
    def data(stream_id: int, payload: bytes, end_stream: bool = False, padding: int = 0) -> bytes:
        from hyperframe.frame import DataFrame

        frame = DataFrame(stream_id, data=payload, pad_length=padding)
        _flag(frame, "END_STREAM", end_stream)
        _flag(frame, "PADDED", padding)
        return frame.serialize()


def _request(peer: _Peer, stream_id: int, method: str, extra: list = (), split: int = 0) -> bytes:
    return peer.headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            *extra,
        ],
        split=split,
    )


def _chunks(data: bytes, rng: np.random.Generator):
    at = 0
    while at < len(data):
        step = int(rng.integers(1, 40))
        yield data[at : at + step]
        at += step


def test_the_tap_rebuilds_interleaved_exchanges_from_any_chunking():
    from hyperframe.frame import RstStreamFrame, SettingsFrame

    client, server = _Peer(), _Peer()
    predict, status = "/tensorflow.serving.PredictionService/Predict", "/tensorflow.serving.ModelService/GetModelStatus"
    up = PREFACE + SettingsFrame(0).serialize()
    down = SettingsFrame(0).serialize()
    # Stream 1 (headers split over CONTINUATION, padded data), stream 3 (gzip both ways), stream 5 (cancelled),
    # stream 7 (a trailers-only error), interleaved.
    up += _request(client, 1, predict, [("x-client", "a" * 300)], split=40) + _request(
        client, 3, predict, [("grpc-encoding", "gzip")]
    )
    up += client.data(1, _grpc(b"request-one"), end_stream=True, padding=7)
    up += client.data(3, _grpc(b"request-three", compressed=True), end_stream=True)
    up += _request(client, 5, status) + _request(client, 7, status)
    up += RstStreamFrame(5, error_code=8).serialize()
    up += client.data(7, _grpc(b"status?"), end_stream=True)
    down += server.headers(3, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip")])
    down += server.headers(1, [(":status", "200"), ("content-type", "application/grpc")], split=5)
    down += server.data(3, _grpc(b"response-three", compressed=True))
    down += server.data(1, _grpc(b"response-one"), padding=3)
    down += server.headers(
        7, [(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no such model")], end_stream=True
    )
    down += server.headers(1, [("grpc-status", "0")], end_stream=True)
    down += server.headers(3, [("grpc-status", "0")], end_stream=True)

    rng = np.random.default_rng(0)
    for trial in range(3):
        seen = []
        tap = Http2Tap(seen.append, max_message_bytes=1 << 20)
        ups, downs = list(_chunks(up, rng)), list(_chunks(down, rng))
        # The client's bytes come first (the server answers what it has read), then both interleave.
        for chunk in ups:
            tap.feed(True, chunk, 0.0)
        for i, chunk in enumerate(downs):
            tap.feed(False, chunk, 0.001 * i)
        by_result = {(e.method, e.request, e.response, e.status) for e in seen}
        assert by_result == {
            (predict, b"request-one", b"response-one", 0),
            (predict, b"request-three", b"response-three", 0),
            (status, None, None, 1),  # RST_STREAM: cancelled
            (status, b"status?", None, 5),  # trailers-only NOT_FOUND
        }, trial
        assert tap.open_exchanges == 0


def test_the_tap_refuses_what_is_not_http2():
    tap = Http2Tap(lambda e: None, max_message_bytes=1024)
    with pytest.raises(TapError, match="preface"):
        tap.feed(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    tap = Http2Tap(lambda e: None, max_message_bytes=1024)
    tap.feed(True, PREFACE, 0.0)
    with pytest.raises(TapError, match="header block"):
        tap.feed(True, b"\x00\x00\x05\x01\x05\x00\x00\x00\x01" + b"\xff" * 5, 0.0)  # HEADERS of garbage HPACK


def _echo_server(reply: bytes = b"pong"):
    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(lambda body, context: reply + body[:4])

    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[Echo()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_relay_forwards_and_taps_concurrent_calls():
    upstream, port = _echo_server()
    seen, lock = [], threading.Lock()

    def record(exchange):
        with lock:
            seen.append(exchange)

    relay = GrpcRelay(f"127.0.0.1:{port}", record, host="127.0.0.1", port=0).start()
    try:

        def client(k: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
                call = channel.unary_unary("/svc/M")
                for i in range(10):
                    assert (
                        call(f"{k:02d}{i:02d}".encode() + b"x" * 5000, timeout=10)
                        == b"pong" + f"{k:02d}{i:02d}".encode()
                    )

        with futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(client, range(6)))
        assert relay.flush()
    finally:
        relay.stop()
        upstream.stop(0)
    assert len(seen) == 60 and all(e.status == 0 and e.method == "/svc/M" for e in seen)
    assert sorted(e.response for e in seen) == sorted(b"pong" + e.request[:4] for e in seen)


def test_a_tap_that_falls_behind_stops_logging_not_forwarding():
    upstream, port = _echo_server()
    lost, seen = [], []
    relay = GrpcRelay(
        f"127.0.0.1:{port}", seen.append, host="127.0.0.1", port=0, max_pending_bytes=20_000, on_lost=lost.append
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
            call = channel.unary_unary("/svc/M")
            answers = [call(b"abcd" + b"x" * 8000, timeout=10) for _ in range(10)]  # faster than the tap reads
        assert answers == [b"pongabcd"] * 10
        assert relay.flush()
    finally:
        relay.stop()
        upstream.stop(0)
    assert relay.lost_connections == 1 and sum(lost) >= 1 and len(seen) < 10


def test_an_unreachable_upstream_is_unavailable_to_the_client():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    relay = GrpcRelay(f"127.0.0.1:{free}", lambda e: None, host="127.0.0.1", port=0).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/svc/M")(b"x", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        relay.stop()
