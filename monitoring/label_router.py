"""Canary traffic: the proxy chooses the version label of live calls that ask for none.

TF Serving answers a call that names no version and no label with the newest loaded version, which is the
canary once one is loaded beside stable. With routing on (`leukoflow monitor proxy --canary-percent P`),
such a call is sent as `stable`, or as `canary` for P percent of them; a call that names a label or a
version is forwarded as it is. This is how the TF Serving Deployment does canary traffic; KServe does it
with `canaryTrafficPercent` across two revisions instead (infra/k8s/kserve).

Choosing a label means changing the request, which the byte relay (monitoring/grpc_tap.py) cannot do: with
routing on, gRPC goes through `LabelRouter`, a gRPC server that forwards each call's bytes upstream with its
metadata, deadline, status, details and trailing metadata. It costs more per call than the relay (a Python
gRPC server, about 0.8-0.95 ms p50 on 2 cores, docs/architecture.md): the CLI relays unless asked, and the TF
Serving Deployment asks (`--canary-percent=0`), so that clients naming no label keep reading stable. Finished calls reach the proxy's logging and shadow in the same form as the tap's, off the
calling thread.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from components import settings
from monitoring.grpc_tap import Exchange

log = logging.getLogger(__name__)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
CLASSIFY_METHOD = "/tensorflow.serving.PredictionService/Classify"
ROUTED_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD)
AVAILABLE = 30


class LabelChooser:
    """Which label a call that asks for none gets: `canary` for `canary_percent` of them while one is served."""

    def __init__(
        self, upstream: str, canary_percent: float, model_name: str = settings.SERVED_MODEL_NAME, poll_s: float = 2.0
    ) -> None:
        if not 0.0 <= canary_percent <= 100.0:
            raise ValueError(f"canary percent must be within 0..100, got {canary_percent}")
        self.upstream, self.share, self.model_name, self.poll_s = upstream, canary_percent / 100.0, model_name, poll_s
        self.served: dict[str, int] = {}  # label -> version, as the server answers them
        self.routed = {"stable": 0, "canary": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def choose(self) -> str | None:
        """The label for a call that asks for none (None: no label is served, forward it unchanged)."""
        served = self.served
        if "canary" in served and self.share > 0 and random.random() < self.share:
            label = "canary"
        elif "stable" in served:
            label = "stable"
        else:
            return None
        self.routed[label] += 1
        return label

    def refresh(self) -> dict[str, int]:
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        served = {}
        with grpc.insecure_channel(self.upstream) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            for label in ("stable", "canary"):
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = self.model_name
                request.model_spec.version_label = label
                try:
                    response = stub.GetModelStatus(request, timeout=5.0)
                except grpc.RpcError:
                    continue
                ready = [s.version for s in response.model_version_status if s.state == AVAILABLE]
                if ready:
                    served[label] = int(ready[0])
        if served != self.served:
            log.info("label routing: the server answers %s", served or "no label")
        self.served = served
        return served

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the last known labels
                log.warning("label routing: cannot ask the server for its labels: %s", exc)
            self._stop.wait(self.poll_s)

    def start(self) -> LabelChooser:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="proxy-labels", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def relabel(method: str, body: bytes, chooser: LabelChooser) -> bytes:
    """The request with a label chosen when it names neither a version nor a label; else unchanged bytes."""
    from tensorflow_serving.apis import classification_pb2, predict_pb2

    kind = predict_pb2.PredictRequest if method == PREDICT_METHOD else classification_pb2.ClassificationRequest
    try:
        request = kind.FromString(body)
    except Exception:  # noqa: BLE001 - not ours to judge: TF Serving answers it
        return body
    spec = request.model_spec
    if spec.version_label or spec.HasField("version"):
        return body
    label = chooser.choose()
    if label is None:
        return body
    spec.version_label = label
    return request.SerializeToString()


class LabelRouter:
    """A gRPC server forwarding every call's bytes upstream; Predict/Classify without a label get one chosen."""

    def __init__(
        self,
        upstream: str,
        on_exchange: Callable[[Exchange], None],
        chooser: LabelChooser,
        *,
        host: str = "0.0.0.0",
        port: int = 8500,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_workers: int = 64,
    ) -> None:
        self.upstream, self.host, self.port = upstream, host, port
        self.chooser = chooser
        self._on_exchange = on_exchange
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel = grpc.insecure_channel(upstream, options=options)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _forward(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        call = self._channel.unary_unary(method)

        def handle(body: bytes, context: grpc.ServicerContext) -> bytes:
            started = time.perf_counter()
            sent = relabel(method, body, self.chooser) if method in ROUTED_METHODS else body
            metadata = [(k, v) for k, v in context.invocation_metadata() if k not in ("user-agent",)]
            request_id = next((v for k, v in metadata if k == "x-request-id"), None)
            remaining = context.time_remaining()
            try:
                response, outcome = call.with_call(
                    sent, timeout=remaining if remaining and remaining < 1e6 else None, metadata=metadata
                )
            except grpc.RpcError as exc:
                if exc.trailing_metadata():
                    context.set_trailing_metadata(exc.trailing_metadata())
                self._finished(Exchange(method, sent, None, exc.code().value[0], _ms(started), request_id))
                context.abort(exc.code(), exc.details() or "")
            if outcome.initial_metadata():
                context.send_initial_metadata(outcome.initial_metadata())
            if outcome.trailing_metadata():
                context.set_trailing_metadata(outcome.trailing_metadata())
            self._finished(Exchange(method, sent, response, 0, _ms(started), request_id))
            return response

        return handle

    def _finished(self, exchange: Exchange) -> None:
        with self._lock:
            self._pending += 1
        self._done.put(exchange)

    def _deliver(self) -> None:
        """Logging and shadow run here, not in the thread that answers the client."""
        while True:
            exchange = self._done.get()
            if exchange is None:
                return
            try:
                self._on_exchange(exchange)
            except Exception as exc:  # noqa: BLE001 - logging never stops routing
                log.warning("label routing: a finished call could not be handed on: %s", exc)
            finally:
                with self._lock:
                    self._pending -= 1

    def start(self) -> LabelRouter:
        router = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> grpc.RpcMethodHandler:
                return grpc.unary_unary_rpc_method_handler(router._forward(details.method))

        self._server.add_generic_rpc_handlers((Handler(),))
        bound = self._server.add_insecure_port(f"{self.host}:{self.port}")
        if not bound:
            raise OSError(f"cannot listen for gRPC on {self.host}:{self.port}")
        self.port = bound
        self.chooser.start()
        self._thread = threading.Thread(target=self._deliver, name="proxy-routed", daemon=True)
        self._thread.start()
        self._server.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.005)
        return False

    def stop(self) -> None:
        self._server.stop(grace=2).wait(5)
        self.chooser.stop()
        self._done.put(None)
        if self._thread is not None:
            self._thread.join(10)
        self._channel.close()


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
