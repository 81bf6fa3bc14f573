"""The request-logging proxy: a pass-through sidecar in front of tensorflow/serving (docs/architecture.md, option A).

Open-source TF Serving writes no request log, so this process sits in the same pod: it listens on gRPC
8500 and REST 8501, forwards every call unchanged to TF Serving on localhost ports, and hands each
Predict/Classify response to monitoring's RequestLogWriter, which copies numbers (probabilities, the
graph's `feature_*` outputs, ood_score/refer when the model has them) off the request path.

What clients see is what TF Serving sends:
- gRPC: relayed as bytes at the TCP level (monitoring/grpc_tap.py): frames, headers, metadata, status
  codes and details, deadlines and flow control are TF Serving's own. A tap thread decodes a copy of both
  directions later, in batches, and logs each finished Predict/Classify. The proxy never changes a request:
  a Predict with an output_filter is answered by TF Serving itself and logged with the outputs it asked
  for (its features only if it asked for them).
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
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

log = logging.getLogger(__name__)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
CLASSIFY_METHOD = "/tensorflow.serving.PredictionService/Classify"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DT_FLOAT = 1  # TensorProto dtype enum
# The methods metrics are labelled with (a client may call any path: the rest are "other").
API_NAMES = {
    f"/tensorflow.serving.{service}/{method}": method
    for service, methods in (
        ("PredictionService", ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")),
        ("ModelService", ("GetModelStatus", "HandleReloadConfigRequest")),
    )
    for method in methods
}
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# Headers that belong to one hop, not to the message (RFC 9110 7.6.1), and gRPC's own headers.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
REST_API = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>predict|classify)$"
)


class ProxyMetrics:
    """Prometheus counters of the proxy (its own registry; served on --metrics-port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "leukoflow_proxy_requests",
            "Calls forwarded by API and status code",
            ["api", "code"],
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "leukoflow_proxy_request_log_dropped",
            "Request-log records dropped (writer behind, or its folder unusable)",
            registry=self.registry,
        )
        self.shadow_compared = Counter(
            "leukoflow_proxy_shadow_compared",
            "Images answered by both stable and canary (shadow calls, off the request path)",
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "leukoflow_proxy_shadow_dropped",
            "Shadow calls dropped because the shadow queue was full (live calls are never held)",
            registry=self.registry,
        )
        self.shadow_failed = Counter(
            "leukoflow_proxy_shadow_failed",
            "Shadow calls the canary did not answer",
            registry=self.registry,
        )
        self.untapped = Counter(
            "leukoflow_proxy_untapped_connections",
            "gRPC connections still forwarded but no longer logged (the tap fell behind or could not read them)",
            registry=self.registry,
        )


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
    return {
        "model": spec.name,
        "version": spec.version.value if spec.HasField("version") else None,
        "label": label,
        "signature": spec.signature_name or None,
    }


class LoggingProxy:
    """gRPC (relayed bytes, tapped) + REST pass-through to TF Serving, logging Predict/Classify through `writer`."""

    def __init__(
        self,
        upstream_grpc: str,
        upstream_rest: str | None,
        writer: Any,
        *,
        host: str = "0.0.0.0",
        grpc_port: int = 8500,
        rest_port: int = 8501,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metrics: ProxyMetrics | None = None,
        shadow: Any = None,
        chooser: Any = None,
    ) -> None:
        from components.image_features import FEATURE_OUTPUTS

        self.writer = writer
        self.shadow = shadow  # monitoring.shadow.ShadowSender: live calls re-sent to the canary, off the request path
        # monitoring.label_router.LabelChooser: with it, calls naming no label get stable or (a share) canary
        self.chooser = chooser
        self.metrics = metrics or ProxyMetrics()
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        self.upstream_grpc, self.upstream_rest = upstream_grpc, upstream_rest
        self._max = max_message_bytes
        self._logged = (
            ("probabilities", "scores") + tuple(FEATURE_OUTPUTS) + tuple(getattr(writer, "logged_outputs", ()))
        )
        self._counted: dict[tuple[str, str], Any] = {}
        self._relay: Any = None
        self._rest: ThreadingHTTPServer | None = None

    def _count(self, api: str, code: str) -> None:
        child = self._counted.get((api, code))
        if child is None:  # a labels() lookup takes a lock and builds a key each call: keep the children
            child = self._counted.setdefault((api, code), self.metrics.requests.labels(api, code))
        child.inc()

    # ------------------------------------------------------------ gRPC (the tap thread)

    def _exchange(self, exchange: Any) -> None:
        """One finished gRPC call, as the tap rebuilt it: count it; log a successful Predict/Classify."""
        self._count(API_NAMES.get(exchange.method, "other"), STATUS_NAMES.get(exchange.status, "UNKNOWN"))
        if exchange.status != 0 or exchange.method not in (PREDICT_METHOD, CLASSIFY_METHOD):
            return
        meta = {"latency_ms": round(exchange.latency_ms, 3)}
        if exchange.request is None or exchange.response is None:
            self.writer.drop(1, "a gRPC call the tap could not read (over max_message_bytes, or compressed)")
            return
        if self.shadow is not None:  # the request log keeps no identifier; shadow records name the call for review
            self.shadow.offer(exchange, exchange.request_id or uuid.uuid4().hex[:16])
        try:
            if exchange.method == PREDICT_METHOD:
                from tensorflow_serving.apis import predict_pb2

                request = predict_pb2.PredictRequest.FromString(exchange.request)
                images = None
                if getattr(self.writer, "store_images", False):
                    images = [bytes(v) for t in request.inputs.values() if t.dtype == 7 for v in t.string_val]
                self.writer.submit(
                    meta,
                    _predict_reader(exchange.response, request.model_spec.version_label or None, self._logged),
                    images,
                )
            else:
                from tensorflow_serving.apis import classification_pb2

                request = classification_pb2.ClassificationRequest.FromString(exchange.request)
                self.writer.submit(meta, _classify_reader(exchange.response, request.model_spec.version_label or None))
        except Exception:  # noqa: BLE001 - an unparsable request is dropped and counted, never fatal
            self.writer.drop(1, "a gRPC request that is not a TF Serving message")

    def _untapped(self, lost_exchanges: int) -> None:
        self.metrics.untapped.inc()
        self.writer.drop(lost_exchanges, "a gRPC connection is no longer read by the tap")

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
                    self._reply(
                        411, [("Content-Type", "application/json")], b'{"error": "the proxy needs a Content-Length"}'
                    )
                    return
                if length > proxy._max:
                    self._reply(
                        413,
                        [("Content-Type", "application/json")],
                        b'{"error": "request body larger than the proxy\'s max_message_bytes"}',
                    )
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                path = self.path
                if proxy.chooser is not None and self.command == "POST":
                    path = _relabelled_path(path, proxy.chooser)
                started = time.perf_counter()
                for attempt in (0, 1):  # a kept-alive upstream connection may have been closed: retry once
                    conn = self._connection()
                    try:
                        conn.request(self.command, path, body=body, headers=headers)
                        upstream = conn.getresponse()
                        data = upstream.read()
                        break
                    except (ConnectionError, http.client.HTTPException, OSError):
                        conn.close()
                        local.conn = None
                        if attempt:
                            proxy._count("rest", "503")
                            self._reply(
                                503,
                                [("Content-Type", "application/json")],
                                b'{"error": "TF Serving is not reachable behind the proxy"}',
                            )
                            return
                proxy._count("rest", str(upstream.status))
                match = REST_API.match(path.split("?", 1)[0])
                if match and self.command == "POST" and upstream.status == 200:
                    meta = {
                        "model": match["name"],
                        "version": int(match["version"]) if match["version"] else None,
                        "label": match["label"],
                        "signature": None,
                        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
                    }
                    proxy.writer.submit(meta, _rest_reader(data, match["verb"]))
                self._reply(upstream.status, upstream.getheaders(), data)
                if match and self.command == "POST" and upstream.status == 200 and proxy.shadow is not None:
                    from monitoring.shadow import RestCall  # after the reply: the client never waits for it

                    call = RestCall(
                        meta["model"], meta["version"], match["verb"], body or b"", data, meta["latency_ms"]
                    )
                    proxy.shadow.offer_rest(
                        call, match["label"], self.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
                    )

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815

        return Handler

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LoggingProxy:
        # What reading a call needs is imported before the first call: imported later, in the tap or writer
        # thread, TensorFlow's protos would hold the interpreter for seconds while calls wait to be relayed.
        import numpy  # noqa: F401
        from tensorflow_serving.apis import classification_pb2, predict_pb2  # noqa: F401

        import components.domain  # noqa: F401
        from monitoring.grpc_tap import GrpcRelay

        if self.shadow is not None:
            self.shadow.start()
        if self.chooser is not None:
            from monitoring.label_router import LabelRouter

            self._relay = LabelRouter(
                self.upstream_grpc,
                self._exchange,
                self.chooser,
                host=self.host,
                port=self.grpc_port,
                max_message_bytes=self._max,
            ).start()
        else:
            self._relay = GrpcRelay(
                self.upstream_grpc,
                self._exchange,
                host=self.host,
                port=self.grpc_port,
                max_message_bytes=self._max,
                on_lost=self._untapped,
            ).start()
        self.grpc_port = self._relay.port
        if self.upstream_rest and self.rest_port >= 0:
            ThreadingHTTPServer.request_queue_size = 1024  # a real listen backlog
            ThreadingHTTPServer.daemon_threads = True
            self._rest = ThreadingHTTPServer((self.host, self.rest_port), self._rest_handler())
            self.rest_port = self._rest.server_address[1]
            threading.Thread(target=self._rest.serve_forever, name="proxy-rest", daemon=True).start()
        log.info(
            "proxy: gRPC %s:%s and REST %s:%s in front of TF Serving",
            self.host,
            self.grpc_port,
            self.host,
            self.rest_port,
        )
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every call answered so far is read by the tap and written (tests, shutdown)."""
        relayed = self._relay is None or self._relay.flush(timeout)
        return relayed and self.writer.flush(timeout) and (self.shadow is None or self.shadow.flush(timeout))

    def stop(self) -> None:
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._relay is not None:
            self._relay.stop()  # reads what the tap has queued, so its records reach the writer
        if self.shadow is not None:
            self.shadow.stop()
        self.writer.close()


def _relabelled_path(path: str, chooser: Any) -> str:
    """A REST predict/classify path that names no version or label, with the chosen label in it."""
    route, _, query = path.partition("?")
    match = REST_API.match(route)
    if not match or match["version"] or match["label"]:
        return path
    label = chooser.choose()
    if label is None:
        return path
    route = f"/v1/models/{match['name']}/labels/{label}:{match['verb']}"
    return route + (f"?{query}" if query else "")


def _rest_reader(raw: bytes, verb: str) -> Callable[[], tuple[dict, dict]]:
    """Parse a REST predict/classify response later, in the writer's thread."""

    def read() -> tuple[dict, dict]:
        import json

        import numpy as np

        from components.domain import CLASS_NAMES

        body = json.loads(raw)
        if verb == "classify":
            rows = [
                [dict((str(c), float(s)) for c, s in result).get(n, 0.0) for n in CLASS_NAMES]
                for result in body.get("results", [])
            ]
            return {}, {"scores": np.array(rows, np.float32)}
        if "predictions" in body and body["predictions"] and isinstance(body["predictions"][0], dict):
            rows = body["predictions"]
            return {}, {k: np.array([row[k] for row in rows]) for k in rows[0]}
        if isinstance(body.get("outputs"), dict):
            return {}, {k: np.array(v) for k, v in body["outputs"].items()}
        return {}, {}

    return read
