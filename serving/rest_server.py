"""REST front end: TF Serving's /v1/models API (status, metadata, :predict, :classify), metrics, the page hook.

JSON is converted to the same numpy inputs the gRPC path uses, and errors come back as
`{"error": "..."}` with TF Serving's HTTP status for the canonical code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl as ssl_lib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np

from serving import handlers as api
from serving.errors import ServingError, detached_error, invalid_argument
from serving.limits import check_message

if TYPE_CHECKING:  # pragma: no cover
    from serving.metrics import MonitoringConfig

log = logging.getLogger(__name__)

# http_rest_api_util.cc in TF Serving.
PREDICTION_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_RE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
EXPLAIN_RE = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:explain")


# ---------------------------------------------------------------- JSON <-> numpy


def _decode_value(alias: str, value: Any, is_string: bool) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except Exception:  # noqa: BLE001
                raise invalid_argument(f"Unable to base64 decode value of input {alias}") from None
        raise invalid_argument(f'input {alias}: JSON object is not a {{"b64": ...}} value')
    if isinstance(value, list):
        return [_decode_value(alias, v, is_string) for v in value]
    if isinstance(value, str):
        if not is_string:
            raise invalid_argument(f"input {alias}: got a string where the signature expects a number")
        return value.encode("utf-8")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        if is_string:
            raise invalid_argument(
                f'input {alias}: got a number where the signature expects a string (use {{"b64": ...}} for bytes)'
            )
        return value
    if value is None:
        raise invalid_argument(f"input {alias}: null is not a valid value")
    raise invalid_argument(f"input {alias}: unsupported JSON value")


def _shape(alias: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    if not value:
        return [0]
    inner = [_shape(alias, v) for v in value]
    if any(s != inner[0] for s in inner):
        raise invalid_argument(f"input {alias}: lists of different lengths (a tensor must be rectangular)")
    return [len(value)] + inner[0]


def to_array(alias: str, value: Any, dtype: Any) -> np.ndarray:
    """A JSON value -> numpy array of the signature's dtype (object of bytes for strings)."""
    is_string = dtype is object
    decoded = _decode_value(alias, value, is_string)
    shape = _shape(alias, decoded)
    if is_string:
        arr = np.empty(shape, dtype=object)
        flat = arr.reshape(-1) if shape else arr.reshape(1)

        def walk(v: Any, out: list) -> None:
            if isinstance(v, list):
                for x in v:
                    walk(x, out)
            else:
                out.append(v)

        items: list = []
        walk(decoded, items)
        for i, item in enumerate(items):
            flat[i] = item
        return arr
    try:
        return np.asarray(decoded, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid_argument(f"input {alias}: {exc}") from None


def _json_value(alias: str, value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind == "S":
            return [_json_value(alias, v) for v in value] if value.ndim else _json_value(alias, value.item())
        return value.tolist()
    if isinstance(value, bytes):
        if alias.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _parse_json(body: bytes):
    """The request body as JSON; TF Serving's INVALID_ARGUMENT message when it is not."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None


BATCH_KEYS = ("instances", "inputs", "examples")  # the lists whose length is the request's batch
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _bounded_list(text: str, i: int, key: str, max_items: int) -> tuple[list, int]:
    """Parse the JSON array at text[i] element by element, refusing once it has more than max_items."""
    items: list = []
    i = _skip_ws(text, i + 1)
    if text.startswith("]", i):
        return items, i + 1
    while True:
        if len(items) == max_items:
            raise invalid_argument(
                f"input {key!r} has a batch of more than {max_items}, more than the limit max_batch_size={max_items}"
            )
        value, i = _DECODER.raw_decode(text, i)
        items.append(value)
        i = _skip_ws(text, i)
        if text.startswith("]", i):
            return items, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip_ws(text, i + 1)


def _bounded_object(text: str, i: int, value) -> tuple[dict, int]:
    """A JSON object whose opening brace is at `i`; `value(key, text, j)` parses each member's value."""
    out: dict = {}
    i = _skip_ws(text, i + 1)
    if text.startswith("}", i):
        return out, i + 1
    while True:
        key, i = _DECODER.raw_decode(text, i)
        if not isinstance(key, str):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        i = _skip_ws(text, i)
        if not text.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
        out[key], i = value(key, text, _skip_ws(text, i + 1))
        i = _skip_ws(text, i)
        if text.startswith("}", i):
            return out, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip_ws(text, i + 1)


def parse_request(body: bytes, max_items: int):
    """The request body as JSON, with the batch lists (instances, inputs, examples) counted while parsing.

    A body of millions of tiny instances is refused after max_items of them, in microseconds and without
    building the rest; every other value is parsed by the standard decoder. Same result as json.loads.
    """

    def column(key: str, text: str, i: int):  # columnar `inputs`: each list value is bounded like `instances`
        return _bounded_list(text, i, key, max_items) if text.startswith("[", i) else _DECODER.raw_decode(text, i)

    def member(key: str, text: str, i: int):
        if key in BATCH_KEYS and text.startswith("[", i):
            return _bounded_list(text, i, key, max_items)
        if key == "inputs" and text.startswith("{", i):
            return _bounded_object(text, i, column)
        return _DECODER.raw_decode(text, i)

    try:
        text = body.decode("utf-8")
        i = _skip_ws(text, 0)
        if not text.startswith("{", i):
            return _parse_json(body)  # not an object: nothing to bound, and the caller says what is wrong
        out, i = _bounded_object(text, i, member)
        if _skip_ws(text, i) != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
        return out
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None


def predict_json(core: Any, name: str, version: int | None, label: str | None, body: bytes) -> dict:
    """:predict with TF Serving's row (instances -> predictions) and columnar (inputs -> outputs) formats."""
    req = parse_request(body, core.limits.max_batch_size)
    if not isinstance(req, dict):
        raise invalid_argument("JSON Value: not formatted correctly. Expecting object")
    if "instances" in req and "inputs" in req:
        raise invalid_argument("Not both 'instances' and 'inputs' are allowed in a request")
    if "instances" not in req and "inputs" not in req:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    signature_name = req.get("signature_name") or ""
    if not isinstance(signature_name, str):
        raise invalid_argument("'signature_name' key must be a string")
    servable = core.resolve(name, version, label)
    key = signature_name or "serving_default"
    if key not in servable.signatures:
        raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
    specs = servable.input_specs(key)
    inputs: dict[str, np.ndarray] = {}
    row = "instances" in req
    if row:
        instances = req["instances"]
        if not isinstance(instances, list):
            raise invalid_argument("Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument("input 'instances' is an empty batch: at least one element is required")
        named = all(isinstance(x, dict) and set(x) != {"b64"} for x in instances)
        if named:
            for i, inst in enumerate(instances):
                if set(inst) != set(specs):
                    raise invalid_argument(
                        f"instances[{i}] has inputs {{{','.join(sorted(inst))}}}; the signature's are {{{','.join(sorted(specs))}}}"
                    )
            for alias, (dtype, _shape) in specs.items():
                inputs[alias] = to_array(alias, [inst[alias] for inst in instances], dtype)
        else:
            if len(specs) != 1:
                raise invalid_argument(
                    f"instances must be objects naming the inputs {{{','.join(sorted(specs))}}} of a multi-input signature"
                )
            ((alias, (dtype, _shape_)),) = specs.items()
            inputs[alias] = to_array(alias, instances, dtype)
    else:
        columns = req["inputs"]
        if isinstance(columns, dict) and set(columns) != {"b64"}:
            for alias, value in columns.items():
                if alias not in specs:
                    raise invalid_argument(
                        f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                        f"{{{','.join(sorted(specs))}}}."
                    )
                inputs[alias] = to_array(alias, value, specs[alias][0])
        else:
            if len(specs) != 1:
                raise invalid_argument(f"'inputs' must be an object naming the inputs {{{','.join(sorted(specs))}}}")
            ((alias, (dtype, _shape_)),) = specs.items()
            inputs[alias] = to_array(alias, columns, dtype)
    _, outputs = api.run_predict(core, servable, label, signature_name, inputs, [])
    if row:
        n = {v.shape[0] if v.ndim else 0 for v in outputs.values()}
        if len(n) != 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Output tensors have different batch sizes; use the columnar 'inputs' format",
            )
        count = n.pop()
        if len(outputs) == 1:
            ((alias, value),) = outputs.items()
            return {"predictions": [_json_value(alias, value[i]) for i in range(count)]}
        return {"predictions": [{a: _json_value(a, v[i]) for a, v in outputs.items()} for i in range(count)]}
    if len(outputs) == 1:
        ((alias, value),) = outputs.items()
        return {"outputs": _json_value(alias, value)}
    return {"outputs": {a: _json_value(a, v) for a, v in outputs.items()}}


def _feature(name: str, value: Any) -> Any:
    from tensorflow.core.example import feature_pb2

    values = value if isinstance(value, list) else [value]
    f = feature_pb2.Feature()
    if all(isinstance(v, dict) or isinstance(v, str) for v in values):
        f.bytes_list.value.extend(_decode_value(name, v, True) for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        f.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        f.float_list.value.extend(float(v) for v in values)
    else:
        raise invalid_argument(f"feature {name}: values must all be strings/b64, all ints or all floats")
    return f


def _example(obj: Any) -> Any:
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid_argument("Example must be JSON object")
    ex = example_pb2.Example()
    for name, value in obj.items():
        ex.features.feature[name].CopyFrom(_feature(name, value))
    return ex


def classify_json(core: Any, name: str, version: int | None, label: str | None, body: bytes) -> dict:
    """:classify with TF Serving's JSON (examples, optional context) -> {"result": [[[class, score], ...]]}."""
    req = parse_request(body, core.limits.max_batch_size)
    if not isinstance(req, dict) or "examples" not in req:
        raise invalid_argument("Missing 'examples' key")
    if not isinstance(req["examples"], list):
        raise invalid_argument("'examples' must be a list/array")
    context = _example(req["context"]) if "context" in req else None
    serialized = []
    for obj in req["examples"]:
        ex = _example(obj)
        if context is not None:
            merged = type(ex)()
            merged.CopyFrom(context)
            merged.MergeFrom(ex)
            ex = merged
        serialized.append(ex.SerializeToString())
    servable = core.resolve(name, version, label)
    _, result = api.run_classify(core, servable, label, req.get("signature_name") or "", serialized)
    return {"result": [[[cls, score] for cls, score in row] for row in result]}


def _message_json(message: Any, preserve: bool) -> str:
    from google.protobuf import json_format

    try:
        return json_format.MessageToJson(
            message, indent=1, preserving_proto_field_name=preserve, always_print_fields_with_no_presence=True
        )
    except TypeError:  # older protobuf
        return json_format.MessageToJson(
            message, indent=1, preserving_proto_field_name=preserve, including_default_value_fields=True
        )


def status_json(core: Any, name: str, version: int | None, label: str | None) -> str:
    from tensorflow_serving.apis import get_model_status_pb2

    if not name:
        raise invalid_argument("Missing model name in request.")
    req = get_model_status_pb2.GetModelStatusRequest()
    _set_spec(req.model_spec, name, version, label)
    return _message_json(api.get_model_status(core, req), preserve=False)


def metadata_json(core: Any, name: str, version: int | None, label: str | None) -> str:
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not name:
        raise invalid_argument("Missing model name in request.")
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    _set_spec(req.model_spec, name, version, label)
    resp = api.get_model_metadata(core, req)
    sdm = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sdm)
    return (
        '{\n"model_spec":'
        + _message_json(resp.model_spec, True)
        + ',\n"metadata": {"signature_def": '
        + _message_json(sdm, True)
        + "}\n}\n"
    )


def _exclusive(version: int | None, label: str | None) -> None:
    if version is not None and label is not None:
        raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")


def _set_spec(spec: Any, name: str, version: int | None, label: str | None) -> None:
    _exclusive(version, label)
    spec.name = name
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label


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
                    self.pool, self._answer, method, target, headers, body
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

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes, dict]:
        """One complete request -> (status, content type, body, extra headers); never raises."""
        core = self.core
        path = urlsplit(target).path
        start = time.perf_counter()
        api_name, model, code = "rest_other", "", "OK"
        core.set_deadline(None)
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
                _exclusive(version, label)
                if verb == "predict":
                    out = predict_json(core, model, version, label, body)
                elif verb == "classify":
                    out = classify_json(core, model, version, label, body)
                else:
                    raise ServingError(
                        grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported: the model has no regression signature"
                    )
                return 200, "application/json", json.dumps(out).encode(), {}
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
