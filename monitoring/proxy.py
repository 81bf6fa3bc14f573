"""The request-logging proxy: a pass-through sidecar in front of tensorflow/serving (docs/architecture.md, option A).

Open-source TF Serving writes no request log, so this process sits in the same pod: it listens on gRPC
8500 and REST 8501, forwards every call unchanged to TF Serving on localhost ports, and hands each
Predict/Classify response to monitoring's RequestLogWriter, which copies numbers (probabilities, the
graph's `feature_*` outputs, ood_score/refer when the model has them) off the request path.

What clients see is what TF Serving sends:
- gRPC: every method is forwarded as raw bytes (generic handler); status code, details, initial and
  trailing metadata pass through. A Predict with no output_filter is forwarded byte for byte and its
  response returned byte for byte (parsed later, in the writer's thread, in batches: LOG_LINGER_S).
  A Predict *with* an output_filter gets the monitoring outputs added upstream (when the signature has them, from a cached
  GetModelMetadata) and stripped from the reply, so the client receives exactly the outputs it asked for.
- REST: method, path, headers and body forwarded; status, headers and body returned unchanged.
No image bytes and no identifiers are logged unless the writer was opened with store_images.
"""

from __future__ import annotations

import http.client
import logging
import math
import re
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import grpc

log = logging.getLogger(__name__)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
CLASSIFY_METHOD = "/tensorflow.serving.PredictionService/Classify"
METADATA_TTL_S = 60.0            # how long a signature's output list is trusted before asking again
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_THREADS = 64
MAX_METHODS = 256                # gRPC method names whose handler and upstream call are kept
DT_FLOAT = 1                     # TensorProto dtype enum
# How long a response waits in the writer's queue before it is parsed, so the writer's thread works in
# batches: on 2 cores a per-response wake-up, cache-cold, beside TF Serving's inference, cost the
# proxy 0.5 ms p50 (benchmarks/results/serving.md). Records reach the file this much later.
LOG_LINGER_S = 0.25
# Headers that belong to one hop, not to the message (RFC 9110 7.6.1), and gRPC's own headers.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}
REST_API = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                      r":(?P<verb>predict|classify)$")


def _passable(metadata: Any) -> list[tuple[str, Any]]:
    """Custom metadata only: gRPC sets its reserved headers (grpc-*, :pseudo, user-agent) itself."""
    return [(k, v) for k, v in (metadata or ()) if not (k.startswith(("grpc-", ":")) or k == "user-agent")]


class ProxyMetrics:
    """Prometheus counters of the proxy (its own registry; served on --metrics-port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.requests = Counter("leukoflow_proxy_requests", "Calls forwarded by API and status code",
                                ["api", "code"], registry=self.registry)
        self.log_dropped = Counter("leukoflow_proxy_request_log_dropped",
                                   "Request-log records dropped (writer behind, or its folder unusable)",
                                   registry=self.registry)


class _Outputs:
    """Where the monitoring outputs of a signature are, from a cached upstream GetModelMetadata."""

    def __init__(self, channel: grpc.Channel, wanted: Callable[[], tuple[str, ...]]) -> None:
        self._call = channel.unary_unary("/tensorflow.serving.PredictionService/GetModelMetadata")
        self._wanted = wanted
        self._cache: dict[tuple, tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def extra(self, spec: Any, metadata: list, timeout: float | None) -> tuple[str, ...]:
        """The monitoring outputs this request's signature has (empty when it has none or metadata fails)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        choice = spec.WhichOneof("version_choice")
        key = (spec.name, choice, getattr(spec, choice) if choice == "version_label" else
               spec.version.value if choice else None, spec.signature_name or "serving_default")
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit and now - hit[0] < METADATA_TTL_S:
            return hit[1]
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(spec)
        request.model_spec.ClearField("signature_name")
        found: tuple[str, ...] = ()
        try:
            raw = self._call(request.SerializeToString(), timeout=timeout or 10, metadata=metadata)
            response = get_model_metadata_pb2.GetModelMetadataResponse.FromString(raw)
            sdm = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sdm)
            outputs = sdm.signature_def[key[3]].outputs if key[3] in sdm.signature_def else {}
            found = tuple(o for o in self._wanted() if o in outputs)
        except grpc.RpcError as exc:
            log.info("proxy: no signature metadata for %s (%s); output_filter requests are logged as sent",
                     key, exc.code())
        with self._lock:
            self._cache[key] = (now, found)
        return found

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()


class _Batches:
    """Holds the writer's thread until a batch of responses has gathered (see LOG_LINGER_S).

    Called only from the writer's one thread, before it parses a response: the first response submitted
    after the current batch began waits until it is `linger_s` old; the ones submitted before that (those
    queued behind it) are read at once. Records are never held back past that: flush() and close() of the
    writer still see every response queued, and the writer's bounded queue counts drops as before.
    """

    def __init__(self, linger_s: float) -> None:
        self.linger_s = linger_s
        self._began = float("-inf")

    def wait(self, submitted: float) -> None:
        if submitted <= self._began:
            return
        delay = submitted + self.linger_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._began = time.monotonic()


def _logged_arrays(outputs: Any, names: tuple[str, ...]) -> dict:
    """The outputs a record copies, as numpy; the rest (label strings, prediction sets) are never converted.

    Runs in the writer's thread but holds the GIL the gRPC threads need: float outputs with one value per
    element (what the signature returns) take one numpy call, anything else goes through tensor_to_array.
    """
    import numpy as np

    from monitoring.request_log import tensor_to_array

    arrays = {}
    for name in names:
        if name not in outputs:
            continue
        proto = outputs[name]
        shape = [d.size for d in proto.tensor_shape.dim]
        if proto.dtype == DT_FLOAT and not proto.tensor_content and len(proto.float_val) == math.prod(shape):
            arrays[name] = np.array(proto.float_val, np.float32).reshape(shape)
        else:
            arrays[name] = tensor_to_array(proto)
    return arrays


def _predict_reader(raw: bytes, label: str | None, names: tuple[str, ...]) -> Callable[[], tuple[dict, dict]]:
    """Parse a PredictResponse later, in the writer's thread: only the outputs a record copies (`names`)."""

    def read() -> tuple[dict, dict]:
        from tensorflow_serving.apis import predict_pb2

        response = predict_pb2.PredictResponse.FromString(raw)
        return _spec_meta(response.model_spec, label), _logged_arrays(response.outputs, names)

    return read


def _classify_reader(raw: bytes, label: str | None) -> Callable[[], tuple[dict, dict]]:
    """Parse a ClassificationResponse later; scores in the class order of components.domain."""

    def read() -> tuple[dict, dict]:
        import numpy as np
        from tensorflow_serving.apis import classification_pb2

        from components.domain import CLASS_NAMES

        response = classification_pb2.ClassificationResponse.FromString(raw)
        rows = []
        for c in response.result.classifications:
            by_label = {cls.label: cls.score for cls in c.classes}
            rows.append([by_label.get(name, 0.0) for name in CLASS_NAMES])
        return _spec_meta(response.model_spec, label), {"scores": np.array(rows, np.float32)}

    return read


def _spec_meta(spec: Any, label: str | None) -> dict:
    return {"model": spec.name, "version": spec.version.value if spec.HasField("version") else None,
            "label": label, "signature": spec.signature_name or None}


class LoggingProxy:
    """gRPC + REST pass-through to TF Serving, logging Predict/Classify responses through `writer`."""

    def __init__(self, upstream_grpc: str, upstream_rest: str | None, writer: Any, *, host: str = "0.0.0.0",
                 grpc_port: int = 8500, rest_port: int = 8501, threads: int = DEFAULT_THREADS,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, metrics: ProxyMetrics | None = None,
                 log_linger_s: float = LOG_LINGER_S) -> None:
        from components.image_features import FEATURE_OUTPUTS

        self.writer = writer
        self.metrics = metrics or ProxyMetrics()
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        self.upstream_rest = upstream_rest
        self._threads, self._max = threads, max_message_bytes
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self._channel = grpc.insecure_channel(upstream_grpc, options=options)
        self._calls: dict[str, Any] = {}
        self._monitoring_outputs = tuple(FEATURE_OUTPUTS) + tuple(getattr(writer, "logged_outputs", ()))
        self._logged = ("probabilities", "scores") + self._monitoring_outputs  # what a record copies
        self._counted: dict[tuple[str, str], Any] = {}
        self._batches = _Batches(log_linger_s)
        self._outputs = _Outputs(self._channel, lambda: self._monitoring_outputs)
        self._grpc: grpc.Server | None = None
        self._rest: ThreadingHTTPServer | None = None

    def _count(self, api: str, code: str) -> None:
        child = self._counted.get((api, code))
        if child is None:  # a labels() lookup takes a lock and builds a key each call: keep the children
            child = self._counted.setdefault((api, code), self.metrics.requests.labels(api, code))
        child.inc()

    def _submit(self, meta: dict, read: Callable[[], tuple[dict, dict]], images: list[bytes] | None = None) -> None:
        """Queue a response for the writer now (bounded, counted); it is parsed later, in a batch."""
        submitted, batches = time.monotonic(), self._batches

        def deferred() -> tuple[dict, dict]:
            batches.wait(submitted)
            return read()

        self.writer.submit(meta, deferred, images)

    # ------------------------------------------------------------ gRPC

    def _upstream(self, method: str) -> Any:
        call = self._calls.get(method)
        if call is None:  # identity (de)serializers: bytes in, bytes out
            if len(self._calls) >= MAX_METHODS:  # method names come from clients: a bounded cache
                return self._channel.unary_unary(method)
            call = self._calls.setdefault(method, self._channel.unary_unary(method))
        return call

    def _forward(self, method: str, body: bytes, context: grpc.ServicerContext, api: str) -> bytes:
        remaining = context.time_remaining()
        try:
            response, call = self._upstream(method).with_call(
                body, timeout=remaining if remaining is not None and remaining < 86400 else None,
                metadata=_passable(context.invocation_metadata()))
        except grpc.RpcError as err:
            code = err.code() or grpc.StatusCode.UNKNOWN
            self._count(api, code.name)
            initial = _passable(err.initial_metadata() if hasattr(err, "initial_metadata") else ())
            if initial:
                context.send_initial_metadata(initial)
            context.set_trailing_metadata(_passable(err.trailing_metadata() if hasattr(err, "trailing_metadata") else ()))
            context.abort(code, err.details() or "")
        initial = _passable(call.initial_metadata())
        if initial:
            context.send_initial_metadata(initial)
        context.set_trailing_metadata(_passable(call.trailing_metadata()))
        self._count(api, "OK")
        return response

    def _passthrough(self, method: str, body: bytes, context: grpc.ServicerContext) -> bytes:
        return self._forward(method, body, context, method.rsplit("/", 1)[-1])

    def _classify(self, method: str, body: bytes, context: grpc.ServicerContext) -> bytes:
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest.FromString(body)
        started = time.perf_counter()
        response = self._forward(method, body, context, "Classify")
        meta = {"latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        self._submit(meta, _classify_reader(response, request.model_spec.version_label or None))
        return response

    def _predict(self, method: str, body: bytes, context: grpc.ServicerContext) -> bytes:
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest.FromString(body)
        label = request.model_spec.version_label or None
        images = None
        if getattr(self.writer, "store_images", False):
            images = [bytes(v) for t in request.inputs.values() if t.dtype == 7 for v in t.string_val]
        added: tuple[str, ...] = ()
        if request.output_filter:
            asked = set(request.output_filter)
            remaining = context.time_remaining()
            extra = self._outputs.extra(request.model_spec, _passable(context.invocation_metadata()),
                                        remaining if remaining is not None and remaining < 86400 else None)
            added = tuple(o for o in extra if o not in asked)
        started = time.perf_counter()
        if not added:
            response = self._forward(method, body, context, "Predict")
            meta = {"latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}
            self._submit(meta, _predict_reader(response, label, self._logged), images)
            return response
        request.output_filter.extend(added)
        response = predict_pb2.PredictResponse.FromString(
            self._forward(method, request.SerializeToString(), context, "Predict"))
        meta = {**_spec_meta(response.model_spec, label),
                "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        logged = {k: response.outputs[k] for k in self._logged if k in response.outputs}  # protos: converted later
        self._submit(meta, lambda: ({}, _logged_arrays(logged, self._logged)), images)
        for name in added:  # the client gets exactly the outputs it asked for
            del response.outputs[name]
        return response.SerializeToString()

    def _grpc_handler(self) -> grpc.GenericRpcHandler:
        proxy = self
        special = {PREDICT_METHOD: proxy._predict, CLASSIFY_METHOD: proxy._classify}
        handlers: dict[str, grpc.RpcMethodHandler] = {}

        def make(method: str) -> grpc.RpcMethodHandler:
            fn = special.get(method, proxy._passthrough)
            # Every TF Serving method is unary; raw bytes in and out.
            return grpc.unary_unary_rpc_method_handler(lambda body, context: fn(method, body, context))

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> Any:
                handler = handlers.get(details.method)
                if handler is None:  # one per method name, built once
                    if len(handlers) >= MAX_METHODS:  # method names come from clients: a bounded cache
                        return make(details.method)
                    handler = handlers.setdefault(details.method, make(details.method))
                return handler

        return Handler()

    # ------------------------------------------------------------ REST

    def _rest_handler(self) -> type:
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "leukoflow-proxy"

            def log_message(self, *_: Any) -> None:  # access logs stay off: paths can name models only, but be quiet
                return

            def _connection(self) -> http.client.HTTPConnection:
                conn = getattr(local, "conn", None)
                if conn is None:
                    host, _, port = proxy.upstream_rest.rpartition(":")
                    conn = local.conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=300)
                return conn

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response_only(status)
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP and key.lower() not in ("date", "server"):
                        self.send_header(key, value)
                self.send_header("Date", self.date_time_string())
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    self._reply(411, [("Content-Type", "application/json")],
                                b'{"error": "the proxy needs a Content-Length"}')
                    return
                if length > proxy._max:
                    self._reply(413, [("Content-Type", "application/json")],
                                b'{"error": "request body larger than the proxy\'s max_message_bytes"}')
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                started = time.perf_counter()
                for attempt in (0, 1):  # a kept-alive upstream connection may have been closed: retry once
                    conn = self._connection()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        upstream = conn.getresponse()
                        data = upstream.read()
                        break
                    except (ConnectionError, http.client.HTTPException, OSError):
                        conn.close()
                        local.conn = None
                        if attempt:
                            proxy._count("rest", "503")
                            self._reply(503, [("Content-Type", "application/json")],
                                        b'{"error": "TF Serving is not reachable behind the proxy"}')
                            return
                proxy._count("rest", str(upstream.status))
                match = REST_API.match(self.path.split("?", 1)[0])
                if match and self.command == "POST" and upstream.status == 200:
                    meta = {"model": match["name"], "version": int(match["version"]) if match["version"] else None,
                            "label": match["label"], "signature": None,
                            "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}
                    proxy._submit(meta, _rest_reader(data, match["verb"]))
                self._reply(upstream.status, upstream.getheaders(), data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815

        return Handler

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "LoggingProxy":
        limit = self._max
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="proxy-grpc"),
            handlers=[self._grpc_handler()],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
            maximum_concurrent_rpcs=self._threads * 64,
        )
        bound = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if not bound:
            raise OSError(f"cannot bind gRPC to {self.host}:{self.grpc_port}")
        server.start()
        self._grpc, self.grpc_port = server, bound
        if self.upstream_rest and self.rest_port >= 0:
            ThreadingHTTPServer.request_queue_size = 1024  # a real listen backlog
            ThreadingHTTPServer.daemon_threads = True
            self._rest = ThreadingHTTPServer((self.host, self.rest_port), self._rest_handler())
            self.rest_port = self._rest.server_address[1]
            threading.Thread(target=self._rest.serve_forever, name="proxy-rest", daemon=True).start()
        log.info("proxy: gRPC %s:%s and REST %s:%s in front of TF Serving", self.host, self.grpc_port, self.host,
                 self.rest_port)
        return self

    def stop(self) -> None:
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        self._channel.close()
        self.writer.close()


def _rest_reader(raw: bytes, verb: str) -> Callable[[], tuple[dict, dict]]:
    """Parse a REST predict/classify response later, in the writer's thread."""

    def read() -> tuple[dict, dict]:
        import json

        import numpy as np

        from components.domain import CLASS_NAMES

        body = json.loads(raw)
        if verb == "classify":
            rows = [[dict((str(c), float(s)) for c, s in result).get(n, 0.0) for n in CLASS_NAMES]
                    for result in body.get("results", [])]
            return {}, {"scores": np.array(rows, np.float32)}
        if "predictions" in body and body["predictions"] and isinstance(body["predictions"][0], dict):
            rows = body["predictions"]
            return {}, {k: np.array([row[k] for row in rows]) for k in rows[0]}
        if isinstance(body.get("outputs"), dict):
            return {}, {k: np.array(v) for k, v in body["outputs"].items()}
        return {}, {}

    return read
