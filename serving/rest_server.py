"""REST front end: TF Serving's /v1/models API (status, metadata, :predict, :classify), metrics, the page hook.

JSON is converted to the same numpy inputs the gRPC path uses, and errors come back as
`{"error": "..."}` with TF Serving's HTTP status for the canonical code.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import ssl as ssl_lib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np

from serving import handlers as api
from serving.errors import ServingError, from_exception, invalid_argument
from serving.limits import check_message

if TYPE_CHECKING:  # pragma: no cover
    from serving.metrics import MonitoringConfig

log = logging.getLogger(__name__)

# http_rest_api_util.cc in TF Serving.
PREDICTION_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
STATUS_RE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
EXPLAIN_RE = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:explain")
MAX_CONNECTIONS = 1024
IDLE_TIMEOUT_S = 30


# ---------------------------------------------------------------- JSON <-> numpy


def _decode_value(alias: str, value: Any, is_string: bool) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except Exception:  # noqa: BLE001
                raise invalid_argument(f"Unable to base64 decode value of input {alias}") from None
        raise invalid_argument(f"input {alias}: JSON object is not a {{\"b64\": ...}} value")
    if isinstance(value, list):
        return [_decode_value(alias, v, is_string) for v in value]
    if isinstance(value, str):
        if not is_string:
            raise invalid_argument(f"input {alias}: got a string where the signature expects a number")
        return value.encode("utf-8")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        if is_string:
            raise invalid_argument(f"input {alias}: got a number where the signature expects a string (use {{\"b64\": ...}} for bytes)")
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


def predict_json(core: Any, name: str, version: int | None, label: str | None, body: bytes) -> dict:
    """:predict with TF Serving's row (instances -> predictions) and columnar (inputs -> outputs) formats."""
    req = _parse_json(body)
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
                        f"instances[{i}] has inputs {{{','.join(sorted(inst))}}}; the signature's are {{{','.join(sorted(specs))}}}")
            for alias, (dtype, _shape_) in specs.items():
                inputs[alias] = to_array(alias, [inst[alias] for inst in instances], dtype)
        else:
            if len(specs) != 1:
                raise invalid_argument(
                    f"instances must be objects naming the inputs {{{','.join(sorted(specs))}}} of a multi-input signature")
            (alias, (dtype, _shape_)), = specs.items()
            inputs[alias] = to_array(alias, instances, dtype)
    else:
        columns = req["inputs"]
        if isinstance(columns, dict) and set(columns) != {"b64"}:
            for alias, value in columns.items():
                if alias not in specs:
                    raise invalid_argument(
                        f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                        f"{{{','.join(sorted(specs))}}}.")
                inputs[alias] = to_array(alias, value, specs[alias][0])
        else:
            if len(specs) != 1:
                raise invalid_argument(f"'inputs' must be an object naming the inputs {{{','.join(sorted(specs))}}}")
            (alias, (dtype, _shape_)), = specs.items()
            inputs[alias] = to_array(alias, columns, dtype)
    _, outputs = api.run_predict(core, servable, label, signature_name, inputs, [])
    if row:
        n = {v.shape[0] if v.ndim else 0 for v in outputs.values()}
        if len(n) != 1:
            raise ServingError(api.grpc.StatusCode.INVALID_ARGUMENT,
                               "Output tensors have different batch sizes; use the columnar 'inputs' format")
        count = n.pop()
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            return {"predictions": [_json_value(alias, value[i]) for i in range(count)]}
        return {"predictions": [{a: _json_value(a, v[i]) for a, v in outputs.items()} for i in range(count)]}
    if len(outputs) == 1:
        (alias, value), = outputs.items()
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
    req = _parse_json(body)
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
        return json_format.MessageToJson(message, indent=1, preserving_proto_field_name=preserve,
                                         always_print_fields_with_no_presence=True)
    except TypeError:  # older protobuf
        return json_format.MessageToJson(message, indent=1, preserving_proto_field_name=preserve,
                                         including_default_value_fields=True)


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
    return ('{\n"model_spec":' + _message_json(resp.model_spec, True) + ',\n"metadata": {"signature_def": '
            + _message_json(sdm, True) + "}\n}\n")


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], core: Any, monitoring: "MonitoringConfig",
                 num_threads: int, ssl_context: ssl_lib.SSLContext | None) -> None:
        super().__init__(address, _Handler)
        self.core = core
        self.monitoring = monitoring
        self.work = threading.BoundedSemaphore(num_threads)  # model work in flight, like rest_api_num_threads
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.ssl_context = ssl_context

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)  # too many open connections: refuse rather than grow without bound
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                request.settimeout(IDLE_TIMEOUT_S)
                request = self.ssl_context.wrap_socket(request, server_side=True)  # handshake in this thread
            super().process_request_thread(request, client_address)
        except (OSError, ssl_lib.SSLError) as exc:
            log.debug("connection from %s failed: %s", client_address, exc)
            self.shutdown_request(request)
        finally:
            self.connections.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK hold the body back for ~40 ms on every keep-alive response.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S
    server: _Server
    server_version = "leukoflow-serving"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            if k.lower() not in ("content-length",):
                self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, err: ServingError) -> None:
        self._send(err.http_status, json.dumps({"error": err.message}).encode())

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise invalid_argument("chunked request bodies are not supported; send Content-Length")
        try:
            n = int(length or 0)
        except ValueError:
            self.close_connection = True
            raise invalid_argument("bad Content-Length") from None
        if n < 0:
            self.close_connection = True
            raise invalid_argument("bad Content-Length")
        try:
            check_message(n, self.server.core.limits)
        except ServingError:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise
        return self.rfile.read(n) if n else b""

    def _dispatch(self, method: str) -> None:
        core = self.server.core
        path = urlsplit(self.path).path
        start = time.perf_counter()
        api_name, model, code = "rest_other", "", "OK"
        core.set_deadline(None)
        try:
            body = self._read_body()  # always: an unread body would be parsed as the next request
            mon = self.server.monitoring
            if mon.enable and path == mon.path:
                self._send(200, core.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
                return
            explain = EXPLAIN_RE.fullmatch(path) if method == "POST" else None
            if explain or not (path.lower().startswith("/v1/") or path.lower() == "/v1" or path.startswith("/monitoring/")):
                if self._page(method, path, body):
                    return
                self._send(404, json.dumps({"error": f"Not found: {method} {path}"}).encode())
                return
            with self.server.work:
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
                        raise ServingError(api.grpc.StatusCode.UNIMPLEMENTED,
                                           "Regress is not supported: the model has no regression signature")
                    self._send(200, json.dumps(out).encode())
                elif method == "GET" and (m := STATUS_RE.fullmatch(path)):
                    model, version, label = _model_info(m)
                    if m.group(4):
                        api_name = "rest_metadata"
                        self._send(200, metadata_json(core, model, version, label).encode())
                    else:
                        api_name = "rest_status"
                        self._send(200, status_json(core, model, version, label).encode())
                else:
                    raise invalid_argument(f"Malformed request: {method} {path}")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, never a dropped connection
            err = from_exception(exc)
            code = err.code.name
            if err.code == api.grpc.StatusCode.INTERNAL:
                log.exception("REST %s %s failed", method, path)
            try:
                self._error(err)
            except OSError:
                pass
        finally:
            if api_name != "rest_other":
                core.metrics.observe(api_name, model, getattr(core.local, "version", None), code, time.perf_counter() - start)

    def _page(self, method: str, path: str, body: bytes) -> bool:
        """Hand the request to serving.page.routes when that module exists."""
        try:
            from serving.page import routes  # type: ignore
        except ImportError:
            return False
        result = routes.handle(method, path, {k: v for k, v in self.headers.items()}, body, self.server.core.manager)
        if result is None:
            return False
        status, headers, payload = result
        headers = dict(headers or {})
        ctype = headers.pop("Content-Type", headers.pop("content-type", "application/octet-stream"))
        self._send(status, payload, ctype, headers)
        return True


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


def start_rest_server(core: Any, host: str, port: int, num_threads: int, monitoring: "MonitoringConfig",
                      ssl: Any = None) -> tuple[_Server, int]:
    """Start the REST server in a background thread; returns it and the bound port."""
    server = _Server((host, port), core, monitoring, num_threads, _ssl_context(ssl) if ssl else None)
    thread = threading.Thread(target=server.serve_forever, name="rest", daemon=True)
    thread.start()
    return server, server.server_address[1]
