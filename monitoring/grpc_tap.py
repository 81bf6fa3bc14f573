"""gRPC pass-through at the TCP level, read by a passive HTTP/2 tap off the request path.

Why bytes and not a gRPC server: a Python gRPC server that re-issues each call upstream costs about
0.8-0.95 ms p50 on 2 cores even when it does nothing else (docs/architecture.md), the whole 1 ms budget
of the request-logging proxy. Relaying bytes costs about 0.15 ms, and reading them can wait.

- `GrpcRelay` (one asyncio thread) copies each connection's bytes both ways, unchanged, with back-pressure
  (a slow reader pauses the other side). Clients therefore see exactly what TF Serving sends: frames,
  headers, metadata, status codes and details, flow control, deadlines.
- Each chunk is also queued, by reference, for the tap thread, which wakes every `TAP_INTERVAL_S`, decodes
  the HTTP/2 frames of both directions (hyperframe; one HPACK decoder per direction, hpack), rebuilds each
  gRPC exchange (method, request message, response message, grpc-status) and hands the finished ones to a
  callback. Nothing on the request path waits for it.
- Bounded: chunks waiting for the tap are capped at `max_pending_bytes`. A connection whose next chunk would
  pass the cap is no longer read (HPACK state cannot be rebuilt across a gap): its open exchanges are counted
  as lost (`on_lost`), the relay goes on forwarding it, and a warning says so (at most once a minute).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TAP_INTERVAL_S = 0.05  # how often the tap thread reads what the relay queued
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 4096
MAX_HEADER_LIST_BYTES = 1024 * 1024  # far above gRPC's 8 KiB metadata default; only a guard
WARN_EVERY_S = 60.0
SETTINGS_HEADER_TABLE_SIZE = 0x1


class TapError(Exception):
    """The bytes of a connection cannot be read as HTTP/2 (the relay still forwards them)."""


@dataclass
class Exchange:
    """One finished gRPC call as the tap saw it."""

    method: str  # ":path", e.g. /tensorflow.serving.PredictionService/Predict
    request: bytes | None  # the first request message (None: none, compressed unknown, or too big)
    response: bytes | None  # the first response message
    status: int  # grpc-status (2, UNKNOWN, when the server sent none)
    latency_ms: float  # request headers seen -> trailers seen, at the relay
    request_id: str | None = None  # the client's x-request-id metadata, when it sent one


class _Stream:
    __slots__ = (
        "method",
        "started",
        "request",
        "response",
        "request_encoding",
        "response_encoding",
        "response_headers",
        "oversized",
        "request_id",
    )

    def __init__(self, method: str, started: float, encoding: str | None, request_id: str | None = None) -> None:
        self.method, self.started, self.request_encoding = method, started, encoding
        self.request_id = request_id
        self.request, self.response = bytearray(), bytearray()
        self.response_encoding: str | None = None
        self.response_headers = False
        self.oversized = False


class _Side:
    """One direction of a connection: its unparsed bytes, its HPACK decoder, a header block in progress."""

    def __init__(self, client: bool) -> None:
        import hpack

        self.client = client
        self.buffer = bytearray()
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_BYTES)
        self.preface = client  # the client's bytes start with the connection preface
        self.block: tuple[int, bytearray, bool] | None = None


def _first_message(data: bytes | bytearray, encoding: str | None) -> bytes | None:
    """The first gRPC length-prefixed message of a body, decompressed when it says so."""
    if len(data) < 5:
        return None
    flag, size = data[0], int.from_bytes(data[1:5], "big")
    if len(data) < 5 + size:
        return None
    message = bytes(data[5 : 5 + size])
    if not flag:
        return message
    if encoding == "gzip":
        return zlib.decompress(message, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(message)
    return None


class Http2Tap:
    """Rebuilds the gRPC exchanges of one HTTP/2 connection from copies of its two byte streams."""

    def __init__(self, on_exchange: Callable[[Exchange], None], max_message_bytes: int) -> None:
        self._on_exchange = on_exchange
        self._max = max_message_bytes
        self._client, self._server = _Side(True), _Side(False)
        self._streams: dict[int, _Stream] = {}

    @property
    def open_exchanges(self) -> int:
        return len(self._streams)

    def feed(self, from_client: bool, data: bytes, at: float) -> None:
        """Read one chunk of one direction; raises TapError when it is not HTTP/2."""
        from hyperframe.exceptions import HyperframeError
        from hyperframe.frame import Frame

        side = self._client if from_client else self._server
        buffer = side.buffer
        buffer += data
        if side.preface:
            if len(buffer) < len(PREFACE):
                return
            if bytes(buffer[: len(PREFACE)]) != PREFACE:
                raise TapError("the client did not open with the HTTP/2 preface")
            del buffer[: len(PREFACE)]
            side.preface = False
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                return
            header, body = bytes(buffer[:9]), bytes(buffer[9 : 9 + length])
            del buffer[: 9 + length]
            try:
                frame, _ = Frame.parse_frame_header(memoryview(header))
                frame.parse_body(memoryview(body))
            except (HyperframeError, ValueError) as exc:
                raise TapError(f"unreadable HTTP/2 frame ({exc})") from None
            self._frame(side, frame, at)

    def _frame(self, side: _Side, frame: Any, at: float) -> None:
        kind = frame.type
        if side.block is not None and kind != 0x9:
            raise TapError("a header block was interrupted")
        if kind == 0x0:  # DATA
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                body = stream.request if side.client else stream.response
                if not stream.oversized:
                    body += frame.data
                    if len(body) > self._max + 5:
                        stream.oversized = True
                        body.clear()
                if "END_STREAM" in frame.flags and not side.client:
                    self._finish(frame.stream_id, stream, {}, at)  # a body without trailers: not gRPC
        elif kind in (0x1, 0x9):  # HEADERS, CONTINUATION
            if kind == 0x1:
                side.block = (frame.stream_id, bytearray(frame.data), "END_STREAM" in frame.flags)
            else:
                if side.block is None or side.block[0] != frame.stream_id:
                    raise TapError("CONTINUATION without its HEADERS")
                side.block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                stream_id, block, end = side.block
                side.block = None
                self._headers(side, stream_id, block, end, at)
        elif kind == 0x3:  # RST_STREAM: the call was cancelled or refused
            stream = self._streams.pop(frame.stream_id, None)
            if stream is not None:
                self._on_exchange(Exchange(stream.method, None, None, 1, (at - stream.started) * 1000.0))
        elif kind == 0x4 and "ACK" not in frame.flags:  # SETTINGS: the table size the sender's decoder allows
            size = frame.settings.get(SETTINGS_HEADER_TABLE_SIZE)
            if size is not None:
                (self._server if side.client else self._client).decoder.max_allowed_table_size = size

    def _headers(self, side: _Side, stream_id: int, block: bytearray, end_stream: bool, at: float) -> None:
        import hpack

        try:  # every block is decoded, whatever its stream, or the HPACK tables drift apart
            headers = dict(side.decoder.decode(bytes(block), raw=False))
        except hpack.HPACKError as exc:
            raise TapError(f"unreadable header block ({exc})") from None
        if side.client:
            if stream_id not in self._streams:
                self._streams[stream_id] = _Stream(
                    headers.get(":path", ""), at, headers.get("grpc-encoding"), headers.get("x-request-id")
                )
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not stream.response_headers and "grpc-status" not in headers:
            stream.response_headers = True
            stream.response_encoding = headers.get("grpc-encoding")
            if end_stream:
                self._finish(stream_id, stream, headers, at)
            return
        self._finish(stream_id, stream, headers, at)  # trailers, or a trailers-only answer

    def _finish(self, stream_id: int, stream: _Stream, trailers: dict, at: float) -> None:
        self._streams.pop(stream_id, None)
        try:
            status = int(trailers.get("grpc-status", "2"))
        except ValueError:
            status = 2
        try:
            request = None if stream.oversized else _first_message(stream.request, stream.request_encoding)
            response = None if stream.oversized else _first_message(stream.response, stream.response_encoding)
        except zlib.error:
            request = response = None
        self._on_exchange(
            Exchange(stream.method, request, response, status, (at - stream.started) * 1000.0, stream.request_id)
        )


# ---------------------------------------------------------------- the relay


class _Half(asyncio.Protocol):
    """One socket of a relayed connection."""

    def __init__(self, conn: _Connection, client: bool) -> None:
        self.conn, self.client = conn, client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.forward(self.client, data)

    def eof_received(self) -> bool:
        self.conn.eof(self.client)
        return True  # half-close: the other direction may still be talking

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost(self.client)

    def pause_writing(self) -> None:  # this socket's buffer is full: stop reading the other one
        self.conn.pause(not self.client, True)

    def resume_writing(self) -> None:
        self.conn.pause(not self.client, False)


class _Connection:
    def __init__(self, relay: GrpcRelay) -> None:
        self.relay = relay
        self.client: _Half | None = None
        self.server: _Half | None = None
        self.early: list[bytes] | None = []  # client bytes before the upstream connection is up
        self.tapped = True
        self.closed = False
        self.tap: Http2Tap | None = None  # the tap thread's state for this connection

    def made(self, half: _Half) -> None:
        if half.client:
            self.client = half
            return
        self.server = half
        for data in self.early or ():
            half.transport.write(data)
        self.early = None
        if self.closed:
            half.transport.close()

    def forward(self, from_client: bool, data: bytes) -> None:
        if self.tapped:  # queued first: once a reply is on its way, the tap can already see all of it
            self.relay.tap_chunk(self, from_client, data)
        target = self.server if from_client else self.client
        if target is None or target.transport is None:
            if self.early is not None:
                self.early.append(data)
        else:
            target.transport.write(data)

    def eof(self, from_client: bool) -> None:
        target = self.server if from_client else self.client
        if target is not None and target.transport is not None and target.transport.can_write_eof():
            target.transport.write_eof()

    def pause(self, client_side: bool, paused: bool) -> None:
        half = self.client if client_side else self.server
        if half is not None and half.transport is not None and not half.transport.is_closing():
            (half.transport.pause_reading if paused else half.transport.resume_reading)()

    def lost(self, from_client: bool) -> None:
        if not self.closed:
            self.closed = True
            self.relay.closed(self)
        other = self.server if from_client else self.client
        if other is not None and other.transport is not None:
            other.transport.close()


class GrpcRelay:
    """Listens on host:port and relays every connection to `upstream` ("host:port"), tapping a copy."""

    def __init__(
        self,
        upstream: str,
        on_exchange: Callable[[Exchange], None],
        *,
        host: str = "0.0.0.0",
        port: int = 8500,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        if not up_port.isdigit():
            raise ValueError(f"upstream must be host:port, got {upstream!r}")
        self.upstream = (up_host or "127.0.0.1", int(up_port))
        self.host, self.port = host, port
        self._on_exchange, self._on_lost = on_exchange, on_lost or (lambda n: None)
        self._max_message, self._max_pending, self._max_connections = (
            max_message_bytes,
            max_pending_bytes,
            max_connections,
        )
        self._chunks: deque = deque()
        self._queued_bytes = 0  # written by the relay thread only
        self._read_bytes = 0  # written by the tap thread only
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._appended = 0  # chunks queued (relay thread)
        self._taken = 0  # chunks read (tap thread)
        self._threads: list[threading.Thread] = []
        self._warned = float("-inf")
        self.lost_connections = 0

    # ------------------------------------------------------------ relay (event loop thread)

    def _accept(self) -> _Half:
        conn = _Connection(self)
        half = _Half(conn, True)
        if len(self._connections) >= self._max_connections:
            self._loop.call_soon(lambda: half.transport and half.transport.abort())
            conn.tapped = False
            conn.closed = True
            return half
        self._connections.add(conn)
        self._loop.create_task(self._connect(conn))
        return half

    async def _connect(self, conn: _Connection) -> None:
        try:
            await self._loop.create_connection(lambda: _Half(conn, False), *self.upstream)
        except OSError as exc:
            self._warn(f"proxy: TF Serving at {self.upstream[0]}:{self.upstream[1]} is not reachable ({exc})")
            if conn.client is not None and conn.client.transport is not None:
                conn.client.transport.close()

    def tap_chunk(self, conn: _Connection, from_client: bool, data: bytes) -> None:
        if self._queued_bytes - self._read_bytes + len(data) > self._max_pending:
            conn.tapped = False
            self._chunks.append((conn, None, b"", 0.0))  # the tap thread counts its open exchanges as lost
            self._appended += 1
            return
        self._queued_bytes += len(data)
        self._chunks.append((conn, from_client, data, time.perf_counter()))
        self._appended += 1

    def closed(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        self._chunks.append((conn, False, None, time.perf_counter()))  # the tap thread forgets it
        self._appended += 1

    # ------------------------------------------------------------ tap (its own thread)

    def _tap_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TAP_INTERVAL_S)
            self._wake.clear()
            self._drain()
        self._drain()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the tap has read every chunk relayed so far (tests, shutdown); False on timeout."""
        target, deadline = self._appended, time.monotonic() + timeout
        self._wake.set()
        while self._taken < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _drain(self) -> None:
        chunks = self._chunks
        while chunks:
            self._read_chunk(*chunks.popleft())
            self._taken += 1

    def _read_chunk(self, conn: _Connection, from_client: bool | None, data: bytes | None, at: float) -> None:
        if data is None:  # the connection closed: unfinished exchanges never finished
            conn.tap = None
            return
        self._read_bytes += len(data)
        if from_client is None:  # the relay stopped tapping it (the tap fell behind)
            self._lose(conn, "the tap fell behind")
            return
        if conn.tap is None:
            if not conn.tapped:  # no longer read: what was queued before that is of no use
                return
            conn.tap = Http2Tap(self._on_exchange, self._max_message)
        try:
            conn.tap.feed(from_client, data, at)
        except TapError as exc:
            conn.tapped = False
            self._lose(conn, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in reading must never stop the relay
            conn.tapped = False
            self._lose(conn, f"{type(exc).__name__}: {exc}")

    def _lose(self, conn: _Connection, why: str) -> None:
        open_exchanges = conn.tap.open_exchanges if conn.tap is not None else 0
        conn.tap = None
        conn.tapped = False
        self.lost_connections += 1
        self._on_lost(max(open_exchanges, 1))
        self._warn(f"proxy: a connection is no longer logged ({why}); it is still forwarded")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning("%s", message)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> GrpcRelay:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                self._server = await self._loop.create_server(self._accept, self.host, self.port, backlog=1024)
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            if not failure:
                self._loop.run_forever()

        loop_thread = threading.Thread(target=run, name="proxy-grpc-relay", daemon=True)
        tap_thread = threading.Thread(target=self._tap_loop, name="proxy-grpc-tap", daemon=True)
        loop_thread.start()
        ready.wait()
        if failure:
            loop_thread.join(5)
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port}: {failure[0]}")
        tap_thread.start()
        self._threads = [loop_thread, tap_thread]
        return self

    def stop(self) -> None:
        """Stop listening, close every relayed connection, then read what was queued."""
        if not self._threads:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._connections):
                for half in (conn.client, conn.server):
                    if half is not None and half.transport is not None:
                        half.transport.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._threads = []
