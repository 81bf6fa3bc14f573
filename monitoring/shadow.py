"""Shadow calls: each successful live gRPC Predict/Classify the proxy saw is re-sent to the `canary` version.

The proxy's tap thread (monitoring/grpc_tap.py) hands finished calls to `ShadowSender.offer`, which only
samples and queues them: the client already has its answer, and nothing here runs on the relay's thread.
Worker threads send a copy of the request with `model_spec.version_label = "canary"` to TF Serving (the
same upstream as the live call), compare the two answers per image and append one JSON line per image
(components/promote/rollout.py `compared_record`) to the shadow folder. The queue is bounded: when it is
full a shadow call is dropped and counted (a `dropped` line, and the proxy's metric), never waited for.

While no `canary` label is served (asked with GetModelStatus every `poll_s`), nothing is queued. A call that
asked for the canary itself, or that the canary answered, is not compared with itself. Classify answers carry
no `refer` output, so their referral flags are recorded as unknown. REST :predict/:classify calls are
compared the same way (through TF Serving's REST port, `/labels/canary`) when they name `stable` or a version:
a REST answer does not say which version answered a call naming none.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from components import settings
from components.promote import rollout

log = logging.getLogger(__name__)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
CLASSIFY_METHOD = "/tensorflow.serving.PredictionService/Classify"
COUNT_EVERY_S = 1.0  # how often dropped/failed counts are written as lines


def _classes_from_predict(response: Any) -> tuple[list[str], list[bool | None]]:
    """Per image: the class (argmax of probabilities or scores) and the `refer` flag (None without that output)."""
    import numpy as np

    from components.domain import CLASS_NAMES
    from monitoring.request_log import tensor_to_array

    outputs = response.outputs
    name = "probabilities" if "probabilities" in outputs else "scores" if "scores" in outputs else None
    if name is None:
        raise ValueError("the response has no probabilities or scores output")
    probs = tensor_to_array(outputs[name])
    if probs.ndim != 2 or probs.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"{name} has shape {probs.shape}, not (images, {len(CLASS_NAMES)})")
    classes = [CLASS_NAMES[int(i)] for i in np.argmax(probs, axis=1)]
    refer: list[bool | None] = [None] * len(classes)
    if "refer" in outputs:
        flags = tensor_to_array(outputs["refer"]).reshape(-1)
        refer = [bool(v) for v in flags] if flags.size == len(classes) else refer
    return classes, refer


@dataclass
class RestCall:
    """A successful live REST :predict/:classify, as the proxy forwarded it."""

    model: str
    version: int | None
    verb: str  # predict | classify
    body: bytes
    response: bytes
    latency_ms: float


def _classes_from_rest(raw: bytes, verb: str) -> tuple[list[str], list[bool | None]]:
    """Per image: the class and `refer` flag of a TF Serving REST answer (row or columnar format)."""
    import numpy as np

    from components.domain import CLASS_NAMES

    body = json.loads(raw)
    if verb == "classify":
        classes = [str(max(result, key=lambda pair: float(pair[1]))[0]) for result in body["results"]]
        return classes, [None] * len(classes)
    rows = body.get("predictions")
    refer: list[bool | None]
    if rows is None and isinstance(body.get("outputs"), dict):  # columnar
        outputs = body["outputs"]
        probs = np.asarray(outputs.get("probabilities", outputs.get("scores")), float)
        flags = outputs.get("refer")
        refer = (
            [bool(v) for v in flags] if isinstance(flags, list) and len(flags) == len(probs) else [None] * len(probs)
        )
    elif rows and isinstance(rows[0], dict):
        probs = np.asarray([row.get("probabilities", row.get("scores")) for row in rows], float)
        refer = [None if row.get("refer") is None else bool(row["refer"]) for row in rows]
    else:
        probs = np.asarray(rows if rows is not None else body.get("outputs"), float)
        refer = [None] * len(probs)
    if probs.ndim != 2 or probs.shape[1] != len(CLASS_NAMES):
        raise ValueError(f"REST answer with probabilities of shape {probs.shape}")
    return [CLASS_NAMES[int(i)] for i in probs.argmax(axis=1)], refer


def _classes_from_classify(response: Any) -> tuple[list[str], list[bool | None]]:
    classes = []
    for c in response.result.classifications:
        best = max(c.classes, key=lambda x: x.score, default=None)
        if best is None:
            raise ValueError("a classification without classes")
        classes.append(best.label.decode() if isinstance(best.label, bytes) else best.label)
    return classes, [None] * len(classes)


class ShadowSender:
    """Samples live calls, queues them (bounded) and compares the canary's answers in its own threads."""

    def __init__(
        self,
        upstream: str,
        directory: str | Path,
        *,
        file_name: str = "shadow.jsonl",
        sample_rate: float = settings.SHADOW_SAMPLE_RATE,
        max_pending: int = settings.SHADOW_MAX_PENDING,
        model_name: str = settings.SERVED_MODEL_NAME,
        label: str = "canary",
        poll_s: float = 2.0,
        workers: int = 1,
        timeout_s: float = 30.0,
        metrics: Any = None,
        upstream_rest: str | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"shadow sample rate must be within 0..1, got {sample_rate}")
        if max_pending < 1:
            raise ValueError(f"shadow max_pending must be >= 1, got {max_pending}")
        if not file_name.endswith(".jsonl") or "/" in file_name:
            raise ValueError(f"shadow file name must be a plain name ending in .jsonl, got {file_name!r}")
        self.upstream, self.upstream_rest, self.directory = upstream, upstream_rest, Path(directory)
        self.path = self.directory / file_name
        self.sample_rate, self.model_name, self.label = sample_rate, model_name, label
        self.poll_s, self.timeout_s, self.workers = poll_s, timeout_s, workers
        self.metrics = metrics
        self.canary_version: int | None = None
        self.offered = self.queued = self.dropped = self.failed = self.compared = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._counted = {"dropped": 0, "failed": 0}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # queued or being compared
        self._channel: grpc.Channel | None = None

    # ------------------------------------------------------------ the tap thread's side: cheap, never blocks

    def offer(self, exchange: Any, request_id: str) -> None:
        """A successful live Predict/Classify: queue it for the canary, or drop and count it when the queue is full."""
        canary = self.canary_version
        if canary is None or exchange.request is None or exchange.response is None:
            return
        self._enqueue((exchange, request_id, canary))

    def offer_rest(self, call: RestCall, label: str | None, request_id: str) -> None:
        """A successful live REST call (after the proxy answered it): queue it like a gRPC one.

        Only calls whose answering version is known not to be the canary are compared: those naming `stable`
        (or another label) or a version. A REST answer does not say which version answered a call naming none.
        """
        canary = self.canary_version
        if canary is None or self.upstream_rest is None or label == self.label:
            return
        if label is None and (call.version is None or call.version == canary):
            return
        self._enqueue((call, request_id, canary))

    def _enqueue(self, item: tuple) -> None:
        """Sample an offered call, then queue it for the worker, or drop and count it when the queue is full."""
        self.offered += 1
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        with self._lock:
            self._pending += 1
        try:
            self._queue.put_nowait(item)
            self.queued += 1
        except queue.Full:
            with self._lock:
                self._pending -= 1
                self.dropped += 1
            if self.metrics is not None:
                self.metrics.shadow_dropped.inc()

    # ------------------------------------------------------------ worker threads

    def _stubs(self) -> tuple[Any, Any]:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        return (
            prediction_service_pb2_grpc.PredictionServiceStub(self._channel),
            model_service_pb2_grpc.ModelServiceStub(self._channel),
        )

    def _poll(self) -> None:
        """Which version the canary label names now (None while there is none)."""
        from tensorflow_serving.apis import get_model_status_pb2

        _, models = self._stubs()
        while not self._stop.is_set():
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = self.model_name
            request.model_spec.version_label = self.label
            try:
                response = models.GetModelStatus(request, timeout=5.0)
                ready = [s.version for s in response.model_version_status if s.state == 30]  # AVAILABLE
                version = int(ready[0]) if ready else None
            except grpc.RpcError:
                version = None  # no such label (or the server is down): nothing to compare with
            if version != self.canary_version:
                log.info("shadow: canary is %s", f"version {version}" if version is not None else "not served")
                self.canary_version = version
            self._stop.wait(self.poll_s)

    def _work(self) -> None:
        predict, _ = self._stubs()
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._compare(predict, *item)
            except Exception as exc:  # noqa: BLE001 - a shadow call never stops the proxy
                self._fail(item[2], f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._pending -= 1

    def _fail(self, canary: int, why: str) -> None:
        with self._lock:
            self.failed += 1
        if self.metrics is not None:
            self.metrics.shadow_failed.inc()
        log.debug("shadow call failed: %s", why)

    def _rest(self, call: RestCall) -> tuple[bytes, float]:
        host, _, port = self.upstream_rest.rpartition(":")
        conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=self.timeout_s)
        started = time.perf_counter()
        try:
            conn.request(
                "POST",
                f"/v1/models/{call.model}/labels/{self.label}:{call.verb}",
                body=call.body,
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"the canary answered HTTP {response.status}")
        return data, (time.perf_counter() - started) * 1000.0

    def _compare(self, stub: Any, exchange: Any, request_id: str, canary: int) -> None:
        from tensorflow_serving.apis import classification_pb2, predict_pb2

        if isinstance(exchange, RestCall):
            try:
                data, latency_ms = self._rest(exchange)
            except (OSError, RuntimeError) as exc:
                self._fail(canary, str(exc))
                return
            self._record(
                request_id,
                exchange.model,
                exchange.version,
                canary,
                _classes_from_rest(exchange.response, exchange.verb),
                _classes_from_rest(data, exchange.verb),
                exchange.latency_ms,
                latency_ms,
            )
            return
        if exchange.method == PREDICT_METHOD:
            request_type, response_type, call, read = (
                predict_pb2.PredictRequest,
                predict_pb2.PredictResponse,
                stub.Predict,
                _classes_from_predict,
            )
        elif exchange.method == CLASSIFY_METHOD:
            request_type, response_type, call, read = (
                classification_pb2.ClassificationRequest,
                classification_pb2.ClassificationResponse,
                stub.Classify,
                _classes_from_classify,
            )
        else:
            return
        request = request_type.FromString(exchange.request)
        live = response_type.FromString(exchange.response)
        live_version = live.model_spec.version.value if live.model_spec.HasField("version") else None
        if request.model_spec.version_label == self.label or live_version == canary:
            return  # the canary answered the live call itself
        request.model_spec.ClearField("version")
        request.model_spec.version_label = self.label
        started = time.perf_counter()
        try:
            shadow = call(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            self._fail(canary, f"{exc.code().name}: {exc.details()}")
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        shadow_version = shadow.model_spec.version.value if shadow.model_spec.HasField("version") else canary
        self._record(
            request_id,
            request.model_spec.name,
            live_version,
            shadow_version,
            read(live),
            read(shadow),
            exchange.latency_ms,
            latency_ms,
        )

    def _record(
        self,
        request_id: str,
        model: str,
        live_version: int | None,
        shadow_version: int,
        live: tuple[list[str], list[bool | None]],
        shadow: tuple[list[str], list[bool | None]],
        live_latency_ms: float,
        latency_ms: float,
    ) -> None:
        """One compared line per image of the call."""
        (stable_classes, stable_refer), (canary_classes, canary_refer) = live, shadow
        if len(stable_classes) != len(canary_classes):
            self._fail(shadow_version, "the two answers have different numbers of images")
            return
        lines = [
            rollout.compared_record(
                request_id,
                i,
                model,
                live_version,
                shadow_version,
                stable_classes[i],
                canary_classes[i],
                stable_refer[i],
                canary_refer[i],
                live_latency_ms,
                latency_ms,
            )
            for i in range(len(stable_classes))
        ]
        self._append(lines)
        with self._lock:
            self.compared += len(lines)
        if self.metrics is not None:
            self.metrics.shadow_compared.inc(len(lines))

    def _append(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._write_lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("shadow records cannot be written to %s: %s", self.path, exc)

    def _write_counts(self) -> None:
        """Dropped and failed shadow calls since the last time, as count lines (rollout status adds them up)."""
        lines = []
        with self._lock:
            for kind, total in (("dropped", self.dropped), ("failed", self.failed)):
                new = total - self._counted[kind]
                if new:
                    self._counted[kind] = total
                    why = "the shadow queue was full" if kind == "dropped" else "the canary did not answer"
                    lines.append(rollout.count_record(kind, self.canary_version, new, why))
        if lines:
            self._append(lines)

    def _count_loop(self) -> None:
        while not self._stop.wait(COUNT_EVERY_S):
            self._write_counts()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> ShadowSender:
        self._channel = grpc.insecure_channel(self.upstream)
        targets = [self._poll, self._count_loop] + [self._work] * self.workers
        for i, target in enumerate(targets):
            thread = threading.Thread(target=target, name=f"proxy-shadow-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def refresh(self, timeout: float = 10.0) -> int | None:
        """Wait until the poller has asked at least once more (tests, and a start that should see the canary)."""
        from tensorflow_serving.apis import get_model_status_pb2

        _, models = self._stubs()
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        request.model_spec.version_label = self.label
        try:
            response = models.GetModelStatus(request, timeout=timeout)
            ready = [s.version for s in response.model_version_status if s.state == 30]
            self.canary_version = int(ready[0]) if ready else None
        except grpc.RpcError:
            self.canary_version = None
        return self.canary_version

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued shadow call is compared or failed, and the counts are written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._pending == 0
            if idle:
                self._write_counts()
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self._stop.set()
        for _ in range(self.workers):
            try:
                self._queue.put(None, timeout=5)
            except queue.Full:
                pass
        for thread in self._threads:
            thread.join(10)
        self._write_counts()
        self._threads = []
        if self._channel is not None:
            self._channel.close()
