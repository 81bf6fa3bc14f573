"""REST front end: TF Serving's /v1/models API (status, metadata, :predict, :classify), metrics, the page hook.

The HTTP transport: routes and connections here, JSON <-> numpy in serving.rest_codec, so gRPC and REST
answer alike; errors come back as `{"error": "..."}` with TF Serving's HTTP status for the canonical code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl as ssl_lib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import grpc

from serving.errors import ServingError, detached_error, invalid_argument, not_found
from serving.limits import check_message
from serving.rest_codec import check_version_or_label, classify_json, metadata_json, predict_json, status_json

if TYPE_CHECKING:  # pragma: no cover
    from serving.metrics import MonitoringConfig

log = logging.getLogger(__name__)

# http_rest_api_util.cc in TF Serving.
PREDICTION_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_RE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
EXPLAIN_RE = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:explain")
CASES_PATH = "/v1/cases"
REQUEST_ID_HEADER = "X-Request-Id"


def _model_info(m: re.Match) -> tuple[str, int | None, str | None]:
    name = unquote(m.group(1) or "")
    version = int(m.group(2)) if m.group(2) else None
    label = unquote(m.group(3)) if m.group(3) else None
    return name, version, label


# ---------------------------------------------------------------- HTTP server
#
# An asyncio HTTP/1.1 server: reading a request costs no thread, so slow or idle connections cannot
# exhaust the handlers; only complete requests reach the worker pool (rest_api_num_threads).
# - listen backlog LISTEN_BACKLOG (socketserver's default of 5 overflowed at 32 clients);
# - the headers must arrive within HEADER_TIMEOUT_S of the first byte and the body within a deadline
#   set by its size: absolute deadlines, so a client sending one byte every few seconds is cut off;
# - at most MAX_CONNECTIONS open connections; beyond them a clear 503 and close;
# - keep-alive: idle connections close after KEEPALIVE_IDLE_S, and after MAX_REQUESTS_PER_CONNECTION;
# - Content-Length is checked against max_message_bytes before any of the body is read (with
#   `Expect: 100-continue` the client never sends a refused body).

LISTEN_BACKLOG = 1024
MAX_CONNECTIONS = 2048
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MIN_BODY_BYTES_PER_S = 256 * 1024  # a larger body gets more time, but never unbounded
KEEPALIVE_IDLE_S = 15.0
MAX_REQUESTS_PER_CONNECTION = 1000
MAX_HEADER_BYTES = 64 * 1024
WRITE_TIMEOUT_S = 30.0
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
BIG_BODY_BYTES = 8 * 1024 * 1024  # after a refused body this large, hand freed memory back to the system


class _BadHTTP(Exception):
    """A request the HTTP layer refuses; the connection closes after the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers -> (method, target, version, lower-cased headers)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadHTTP(400, "bad request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadHTTP(400, f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadHTTP(400, f"bad header line {line[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method, target, version, headers


def _body_length(headers: dict[str, str], limits: Any) -> int:
    """The body size from Content-Length, refused before reading when over max_message_bytes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadHTTP(400, "chunked request bodies are not supported; send Content-Length")
    raw = headers.get("content-length", "0").strip() or "0"
    if not raw.isdigit():
        raise _BadHTTP(400, "bad Content-Length")
    n = int(raw)
    try:
        check_message(n, limits)
    except ServingError as exc:
        raise _BadHTTP(exc.http_status, exc.message) from None
    return n


def _connected(reader: asyncio.StreamReader) -> Callable[[], bool]:
    """Whether the client is still there, safe to ask from a worker thread: the event loop keeps reading the
    socket while a request is answered, so a closed or reset connection shows as end of stream or an error."""
    return lambda: not reader.at_eof() and reader.exception() is None


def _release_memory() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class RestServer:
    """The REST front end: asyncio reads requests, a bounded thread pool answers them."""

    def __init__(
        self,
        core: Any,
        monitoring: MonitoringConfig,
        num_threads: int,
        ssl_context: ssl_lib.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.core = core
        self.monitoring = monitoring
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_connections = 0
        self.header_timeout_s = HEADER_TIMEOUT_S  # instance copies: a test may shorten them
        self.keepalive_idle_s = KEEPALIVE_IDLE_S
        self.pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")
        self.loop = asyncio.new_event_loop()
        self.server_address: tuple[str, int] = ("", 0)
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> RestServer:
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self._server = self.loop.run_until_complete(
                    asyncio.start_server(
                        self._connection,
                        host,
                        port,
                        backlog=LISTEN_BACKLOG,
                        limit=MAX_HEADER_BYTES,
                        ssl=self.ssl_context,
                        ssl_handshake_timeout=HEADER_TIMEOUT_S if self.ssl_context else None,
                        reuse_address=True,
                    )
                )
                self.server_address = self._server.sockets[0].getsockname()[:2]
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                error.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="rest", daemon=True)
        self._thread.start()
        started.wait()
        if error:
            raise error[0]
        return self

    def shutdown(self) -> None:
        """Stop accepting and close every connection."""
        if self._thread is None or not self.loop.is_running():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                if hasattr(self._server, "close_clients"):
                    self._server.close_clients()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)  # each closes its connection before the loop stops

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def server_close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()

    # ------------------------------------------------------------ connections

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            self.refused_connections += 1
            await self._write(
                writer,
                503,
                _json_error(
                    f"server busy: {self.open_connections} open connections (limit {self.max_connections}); retry later"
                ),
                "application/json",
                {},
                close=True,
            )
            await self._close(writer)
            return
        self.open_connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl_lib.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.open_connections -= 1
            await self._close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for served in range(MAX_REQUESTS_PER_CONNECTION):
            # Idle keep-alive: wait for the first byte of the next request, then the header deadline starts.
            try:
                first = await asyncio.wait_for(
                    reader.read(1), self.keepalive_idle_s if served else self.header_timeout_s
                )
            except TimeoutError:
                return
            if not first:
                return
            try:
                head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout_s)
            except TimeoutError:
                await self._write(
                    writer,
                    408,
                    _json_error(f"request headers not received within {self.header_timeout_s:g} s"),
                    "application/json",
                    {},
                    close=True,
                )
                return
            except asyncio.LimitOverrunError:
                await self._write(
                    writer,
                    431,
                    _json_error(f"request headers larger than {MAX_HEADER_BYTES} bytes"),
                    "application/json",
                    {},
                    close=True,
                )
                return
            except asyncio.IncompleteReadError:
                return
            try:
                method, target, version, headers = _parse_head(head[:-4])
                length = _body_length(headers, self.core.limits)
            except _BadHTTP as exc:
                await self._write(writer, exc.status, _json_error(exc.message), "application/json", {}, close=True)
                return
            if length and headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = b""
            if length:
                body_timeout = BODY_TIMEOUT_S + length / MIN_BODY_BYTES_PER_S
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), body_timeout)
                except TimeoutError:
                    await self._write(
                        writer,
                        408,
                        _json_error(f"request body of {length} bytes not received within {body_timeout:.0f} s"),
                        "application/json",
                        {},
                        close=True,
                    )
                    return
            conn = headers.get("connection", "").lower()
            close = (
                conn == "close"
                or (version == "HTTP/1.0" and conn != "keep-alive")
                or served + 1 >= MAX_REQUESTS_PER_CONNECTION
            )
            if method not in METHODS:
                status, ctype, payload, extra = (
                    501,
                    "application/json",
                    _json_error(f"method {method} is not supported"),
                    {},
                )
            else:
                status, ctype, payload, extra = await self.loop.run_in_executor(
                    self.pool, self._answer, method, target, headers, body, _connected(reader)
                )
            # The body is not kept while the answer is written or the connection waits for its next request.
            size, body = len(body), b""
            if size >= BIG_BODY_BYTES and status >= 400:
                await self.loop.run_in_executor(self.pool, _release_memory)
            await self._write(
                writer, status, b"" if method == "HEAD" else payload, ctype, extra, close, length=len(payload)
            )
            if close:
                return

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        content_type: str,
        headers: dict,
        close: bool,
        length: int | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            "Server: leukoflow-serving",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload) if length is None else length}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        lines += [
            f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("content-length", "content-type", "connection")
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (TimeoutError, ConnectionError, OSError):
            writer.transport.abort()

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (TimeoutError, ConnectionError, OSError, ssl_lib.SSLError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()

    # ------------------------------------------------------------ requests (worker threads)

    def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes, alive: Callable[[], bool] | None = None
    ) -> tuple[int, str, bytes, dict]:
        """One complete request -> (status, content type, body, extra headers); never raises.

        `alive()` says whether the client is still connected: a large request stops between slices once it is not.
        """
        core = self.core
        path = urlsplit(target).path
        start = time.perf_counter()
        api_name, model, code = "rest_other", "", "OK"
        core.set_deadline(None, alive)
        try:
            mon = self.monitoring
            if mon.enable and path == mon.path:
                return 200, "text/plain; version=0.0.4; charset=utf-8", core.metrics.render(), {}
            explain = EXPLAIN_RE.fullmatch(path) if method == "POST" else None
            if explain or not (
                path.lower().startswith("/v1/") or path.lower() == "/v1" or path.startswith("/monitoring/")
            ):
                page = self._page(method, target, headers, body)
                if page is not None:
                    return page
                return 404, "application/json", _json_error(f"Not found: {method} {path}"), {}
            if method == "POST" and (m := PREDICTION_RE.fullmatch(path)):
                model, version, label = _model_info(m)
                verb = m.group(4).lower()
                api_name = f"rest_{verb}"
                check_version_or_label(version, label)
                if verb == "predict":
                    out = predict_json(core, model, version, label, body)
                elif verb == "classify":
                    out = classify_json(core, model, version, label, body)
                else:
                    raise ServingError(
                        grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported: the model has no regression signature"
                    )
                # The id the request log and a kept referral carry, so a pathologist can label this answer
                # (POST /v1/cases "request_id"); a header, so the TF Serving JSON body stays as clients parse it.
                ids = getattr(core.local, "request_id", None)
                return 200, "application/json", json.dumps(out).encode(), {REQUEST_ID_HEADER: ids} if ids else {}
            if path.rstrip("/").lower() == CASES_PATH:
                api_name = "rest_cases"
                return self._cases(method, body)
            if method in ("GET", "HEAD") and (m := STATUS_RE.fullmatch(path)):
                model, version, label = _model_info(m)
                if m.group(4):
                    api_name = "rest_metadata"
                    return 200, "application/json", metadata_json(core, model, version, label).encode(), {}
                api_name = "rest_status"
                return 200, "application/json", status_json(core, model, version, label).encode(), {}
            raise invalid_argument(f"Malformed request: {method} {path}")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, never a dropped connection
            err = detached_error(exc)
            code = err.code.name
            if err.code == grpc.StatusCode.INTERNAL:
                log.exception("REST %s %s failed", method, path)
            return err.http_status, "application/json", _json_error(err.message), {}
        finally:
            if api_name != "rest_other":
                core.metrics.observe(
                    api_name, model, getattr(core.local, "version", None), code, time.perf_counter() - start
                )

    def _cases(self, method: str, body: bytes) -> tuple[int, str, bytes, dict]:
        """POST /v1/cases: one pathologist label, through the case store (serving.case_intake)."""
        intake = getattr(self.core, "case_intake", None)
        if intake is None:
            from serving.case_intake import OFF_MESSAGE

            raise not_found(OFF_MESSAGE)
        if method != "POST":
            return 405, "application/json", _json_error(f"Method {method} not allowed on {CASES_PATH}; use POST"), {}
        answer = intake.add(body, self.core.limits)
        return 200, "application/json", json.dumps(answer).encode(), {}

    def _page(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, str, bytes, dict] | None:
        """Hand the request to serving.page.routes when that module exists."""
        try:
            from serving.page import routes  # type: ignore
        except ImportError:
            return None
        result = routes.handle(method, target, headers, body, self.core.manager)
        if result is None:
            return None
        status, resp_headers, payload = result
        resp_headers = dict(resp_headers or {})
        ctype = resp_headers.pop("Content-Type", resp_headers.pop("content-type", "application/octet-stream"))
        return status, ctype, payload, resp_headers


def _ssl_context(ssl: Any) -> ssl_lib.SSLContext:
    import os
    import tempfile

    ctx = ssl_lib.SSLContext(ssl_lib.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:  # ssl wants files; the PEMs live only while loading
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert, "wb") as f:
            f.write(ssl.server_cert)
        with open(key, "wb") as f:
            f.write(ssl.server_key)
        ctx.load_cert_chain(cert, key)
    if ssl.custom_ca:
        ctx.load_verify_locations(cadata=ssl.custom_ca.decode())
    if ssl.client_verify:
        ctx.verify_mode = ssl_lib.CERT_REQUIRED
    return ctx


def start_rest_server(
    core: Any, host: str, port: int, num_threads: int, monitoring: MonitoringConfig, ssl: Any = None
) -> tuple[RestServer, int]:
    """Start the REST server on its own event loop thread; returns it and the bound port."""
    server = RestServer(core, monitoring, num_threads, _ssl_context(ssl) if ssl else None).start(host, port)
    return server, server.server_address[1]
