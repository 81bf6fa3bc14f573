"""The server: one ServingCore (models, limits, batching, metrics, request log) behind gRPC and REST.

`Server(options).start()` binds both ports (0 picks a free one; see `.grpc_port` / `.rest_port`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from components.servable import Servable
from serving.batching import EXPIRED_STARTED, Batcher, BatchingParameters, load_batching_parameters
from serving.errors import ServingError, cancelled, deadline_exceeded, from_exception
from serving.limits import Limits, check_batch, check_images, example_images, find_undecodable
from serving.manager import ModelEntry, ModelManager, load_model_config
from serving.metrics import Metrics, MonitoringConfig, load_monitoring_config

log = logging.getLogger(__name__)

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


@dataclass(frozen=True)
class SSLConfig:
    """TF Serving's SSLConfig: PEM contents (a path to a PEM file is accepted too)."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None = None
    client_verify: bool = False


def _pem(value: str, field_name: str) -> bytes:
    if value and not value.lstrip().startswith("-----BEGIN") and Path(value).is_file():
        return Path(value).read_bytes()
    if value and not value.lstrip().startswith("-----BEGIN"):
        raise ValueError(f"ssl config: {field_name} is neither PEM text nor a readable file")
    return value.encode()


def parse_ssl_config(text: str) -> SSLConfig:
    """Parse the SSLConfig text proto (server_key, server_cert, custom_ca, client_verify)."""
    from google.protobuf import text_encoding

    values: dict[str, Any] = {}
    pattern = re.compile(r'(\w+)\s*:\s*((?:"(?:[^"\\]|\\.)*"\s*)+|true|false)', re.S)
    for m in pattern.finditer(re.sub(r"(?m)^\s*#.*$", "", text)):
        key, raw = m.group(1), m.group(2).strip()
        if key not in ("server_key", "server_cert", "custom_ca", "client_verify"):
            raise ValueError(f"ssl config: unknown field {key!r}")
        if raw in ("true", "false"):
            values[key] = raw == "true"
        else:
            parts = re.findall(r'"((?:[^"\\]|\\.)*)"', raw, re.S)
            values[key] = "".join(text_encoding.CUnescape(p).decode() for p in parts)
    if not values.get("server_key") or not values.get("server_cert"):
        raise ValueError("ssl config: server_key and server_cert are required")
    return SSLConfig(
        server_key=_pem(values["server_key"], "server_key"),
        server_cert=_pem(values["server_cert"], "server_cert"),
        custom_ca=_pem(values["custom_ca"], "custom_ca") if values.get("custom_ca") else None,
        client_verify=bool(values.get("client_verify", False)),
    )


@dataclass
class ServerOptions:
    """Everything `leukoflow serve` can set (TF Serving's flag names in the CLI)."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    model_name: str = "default"
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0
    file_system_poll_wait_seconds: float = 1
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    ssl_config_file: str | None = None
    rest_api_num_threads: int | None = None  # None: handler_threads()
    grpc_max_threads: int | None = None
    request_log_dir: str | None = None
    request_log_images: bool = False
    keep_referred_images: str | None = None  # opt-in: a folder for the images the model referred (patient data)
    keep_referred_max_bytes: int = 1024 * 1024 * 1024
    keep_referred_max_days: float = 30.0
    cases_dir: str | None = None  # opt-in: accept a pathologist's labels at POST /v1/cases into this cases folder
    cases_base_data: str | None = None  # what cases are deduplicated against (None: the repository's data/)
    cases_base_manifest: str | None = None  # or a validate manifest.csv / dedup kept.csv of it
    limits: Limits = field(default_factory=Limits)
    warmup: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    tensorflow_intra_op_parallelism: int = 0  # 0: TensorFlow picks (the host's cores), as in TF Serving
    tensorflow_inter_op_parallelism: int = 0
    max_concurrent_runs: int | None = None  # unbatched model runs at once; None: default_concurrent_runs()
    slice_size: int | None = None  # rows per model run of a large request; None: default_slice_size()


def apply_tensorflow_threads(intra_op: int, inter_op: int) -> dict[str, int]:
    """Set TensorFlow's thread pools (0 keeps TensorFlow's choice); returns the effective sizes.

    Must run before TensorFlow executes anything in this process: the pools are fixed at start-up.
    With batching, one thread per batch and intra_op=1 keeps concurrent batches from fighting over cores.
    """
    import tensorflow as tf

    for name, value, getter, setter in (
        (
            "tensorflow_intra_op_parallelism",
            intra_op,
            tf.config.threading.get_intra_op_parallelism_threads,
            tf.config.threading.set_intra_op_parallelism_threads,
        ),
        (
            "tensorflow_inter_op_parallelism",
            inter_op,
            tf.config.threading.get_inter_op_parallelism_threads,
            tf.config.threading.set_inter_op_parallelism_threads,
        ),
    ):
        if value < 0:
            raise ValueError(f"--{name} must be >= 0, got {value}")
        if value and getter() != value:
            try:
                setter(value)
            except RuntimeError:
                raise ValueError(
                    f"--{name}={value}: TensorFlow already started in this process with "
                    f"{getter() or 'its default'}; set it before anything runs"
                ) from None
    return {
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


DEFAULT_HANDLER_THREADS = 16
MAX_AUTO_HANDLER_THREADS = 1024
# Images one unbatched model run takes from a large request, as serving/batching.config's execution batch: a
# started slice of the served MobileNetV2 holds the cores for a fraction of a second, so an expired request
# stops soon and a request arriving behind it waits at most that long.
DEFAULT_SLICE_SIZE = 8
# The deadline is read a moment after gRPC computed it: a caller gone this close to it ran out of time.
DEADLINE_SLACK_S = 0.01


def default_concurrent_runs() -> int:
    """Unbatched model runs at once by default: one per core (at least two)."""
    import os

    return max(2, os.cpu_count() or 2)


def default_slice_size(slice_size: int | None, batching: BatchingParameters | None) -> int:
    """Rows per model run of a large request: the flag when given, else the batch size that runs (batching on),
    else DEFAULT_SLICE_SIZE. A batched slice must fit the batching max_batch_size."""
    if slice_size is None:
        return batching.execution_batch_size if batching is not None else DEFAULT_SLICE_SIZE
    if slice_size < 1:
        raise ValueError(f"--slice_size must be >= 1, got {slice_size}")
    if batching is not None and slice_size > batching.max_batch_size:
        raise ValueError(
            f"--slice_size={slice_size} is larger than the batching max_batch_size ({batching.max_batch_size})"
        )
    return slice_size


def batch_rows(inputs: dict[str, np.ndarray]) -> int | None:
    """The rows every input shares (its first dimension); None when one is a scalar or the first dims differ."""
    sizes = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    return sizes.pop() if len(sizes) == 1 and -1 not in sizes else None


def handler_threads(given: int | None, batching: BatchingParameters | None) -> int:
    """Requests one front end works on at once: the flag when given, else enough to fill every batch.

    A request holds its handler thread while it waits in the batch queue, so with batching the handlers
    must cover a running batch per batch thread plus the one being formed; with fewer, batches stay
    smaller than they may be however many clients call (throughput halves at 32 clients and 16 threads).
    """
    if given is not None:
        if given < 1:
            raise ValueError(f"handler threads must be >= 1, got {given}")
        return given
    if batching is None:
        return DEFAULT_HANDLER_THREADS
    wanted = batching.execution_batch_size * (batching.num_batch_threads + 1)
    return max(DEFAULT_HANDLER_THREADS, min(wanted, MAX_AUTO_HANDLER_THREADS))


class RequestSink(Protocol):
    """Where the core hands each response for the request log (monitoring.request_log.RequestLogWriter).

    Injected by whoever starts the server (`leukoflow serve` wires monitoring's writer in), so serving
    does not import monitoring. `submit` must never block: the writer copies numbers off the request path.
    """

    store_images: bool

    def submit(self, meta: dict, outputs: dict, images: list[bytes] | None = None) -> None: ...

    def close(self) -> None: ...


# Opens a sink: (directory, store_images, on_drop(count)) -> RequestSink.
RequestSinkOpener = Callable[[str, bool, Callable[[int], None]], RequestSink]


class ServingCore:
    """What both front ends call: resolve a ModelSpec, check limits, run (batched or not), record."""

    def __init__(
        self,
        manager: ModelManager,
        limits: Limits,
        metrics: Metrics,
        batcher: Batcher | None = None,
        request_logger: RequestSink | None = None,
        max_concurrent_runs: int | None = None,
        slice_size: int | None = None,
    ) -> None:
        self.manager = manager
        self.limits = limits
        self.metrics = metrics
        self.batcher = batcher
        self.request_logger = request_logger
        self.referral_keeper: Any = None  # components.cases.referred.ReferredImageKeeper when keeping is on
        self.case_intake: Any = None  # serving.case_intake.CaseIntake when --cases_dir is given
        self.local = threading.local()  # per request thread: deadline, caller liveness, version served
        # Without batching, model runs wait for a slot: a request whose deadline passes while waiting is
        # never run (more runs at once than cores only slow every one of them down).
        self.run_slots = threading.BoundedSemaphore(max_concurrent_runs or default_concurrent_runs())
        # A large request runs slice by slice; before each, its deadline and its caller are checked.
        self.slice_size = default_slice_size(slice_size, batcher.params if batcher is not None else None)

    def set_deadline(self, seconds: float | None, alive: Any = None) -> None:
        """The current request's remaining seconds (a gRPC deadline; None: none) and `alive()` (caller still there)."""
        # gRPC reports "no deadline" as a huge number; waits with it overflow, so treat it as none.
        self.local.deadline = time.monotonic() + seconds if seconds is not None and seconds < 86400 else None
        self.local.alive = alive
        self.local.version = None
        self.local.request_id = None

    def stop_reason(self) -> str | None:
        """Why the current request must not run on: "deadline" (passed), "cancelled" (the caller left), else None."""
        deadline = getattr(self.local, "deadline", None)
        alive = getattr(self.local, "alive", None)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return "deadline"
        if alive is not None and not alive():
            return "deadline" if left is not None and left <= DEADLINE_SLACK_S else "cancelled"
        return None

    def remaining(self) -> float | None:
        """Seconds left before the current request's deadline; DEADLINE_EXCEEDED when none are, CANCELLED when the
        caller left (gRPC cancelled, REST connection closed)."""
        reason = self.stop_reason()
        if reason == "cancelled":
            raise cancelled("the caller cancelled the request; the rest of it was not run")
        if reason == "deadline":
            raise deadline_exceeded("Deadline exceeded before the model ran; the request was not run")
        deadline = getattr(self.local, "deadline", None)
        return None if deadline is None else deadline - time.monotonic()

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        return self.manager.resolve(name, version, label)

    def check_encoded(self, alias: str, values: np.ndarray) -> list[bytes]:
        """Check the headers of every encoded image of a string input (format, pixels); returns the flat list."""
        flat = list(values.reshape(-1) if values.ndim else values.reshape(1))
        check_images(alias, flat, self.limits)
        return flat

    def execute(
        self,
        servable: Servable,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        label: str | None = None,
        encoded: dict[str, list[bytes]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Check limits, prepare inputs, run through the batcher when enabled, and log per image.

        `encoded` maps an input alias to its already checked image bytes (Classify passes the images it
        took out of the tf.Examples); otherwise every string input of a predict or classify signature is
        checked here as encoded images.
        """
        start = time.perf_counter()
        self.local.version = servable.version
        sig = servable.signature(signature_name)
        for alias, arr in inputs.items():
            if np.ndim(arr) >= 1:
                check_batch(alias, int(np.shape(arr)[0]), self.limits)
        prepared = servable.prepare(signature_name, inputs)  # names, rank, dtype first: cheap refusals before images
        if encoded is None and sig.method_name in (PREDICT, CLASSIFY):
            encoded = {}
            for alias, arr in prepared.items():
                if sig.inputs[alias].dtype != 7:  # DT_STRING
                    continue
                if sig.method_name == PREDICT:  # encoded images
                    encoded[alias] = self.check_encoded(alias, arr)
                else:  # serialized tf.Examples carrying image/encoded (Predict on the classify signature)
                    encoded[alias] = self.check_encoded(
                        alias, np.array(example_images(list(arr.reshape(-1))), dtype=object)
                    )
        try:
            outputs = self._run_in_slices(servable, signature_name, prepared)
        except Exception as exc:
            if encoded and from_exception(exc).code == grpc.StatusCode.INVALID_ARGUMENT:
                for alias, values in encoded.items():  # name the image the graph could not decode, if one
                    find_undecodable(alias, values, self.limits)
            raise
        if self.metrics:
            n = next((v.shape[0] for v in prepared.values() if v.ndim), 1)
            if n:
                self.metrics.images.labels(servable.name, str(servable.version)).inc(n)
        images = [v for values in (encoded or {}).values() for v in values]
        self._log(servable, signature_name, label, outputs, inputs, images, time.perf_counter() - start)
        return outputs

    def _run_in_slices(
        self, servable: Servable, signature_name: str, prepared: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run slice_size rows at a time, in order; before each slice the deadline and the caller are checked.

        An expired or cancelled request stops after at most the slice that was running: the rest are never
        run (counted as skipped), and the images already scored for it are recorded as stopped work.
        """
        rows = batch_rows(prepared)
        size = self.slice_size
        if self.batcher is not None and rows is not None:
            self.batcher.check_size(rows)  # refused whole, before any slice runs
        if rows is None or rows <= size:
            bounds = [(0, rows)]
        else:
            bounds = [(start, min(start + size, rows)) for start in range(0, rows, size)]
        parts: list[dict[str, np.ndarray]] = []
        scored = 0  # images of this request run so far
        for i, (start, stop) in enumerate(bounds):
            piece = prepared if len(bounds) == 1 else {k: v[start:stop] for k, v in prepared.items()}
            piece_rows = stop - start if rows is not None else 1
            try:
                self.remaining()
                parts.append(self._run_slice(servable, signature_name, piece))
            except ServingError as exc:
                if exc.code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                    raise
                reason = self.stop_reason() or "deadline"
                ran = exc.message == EXPIRED_STARTED  # its batch had started when the caller stopped waiting
                self._count_stop(reason, len(bounds) - i - int(ran), scored + (piece_rows if ran else 0))
                if reason == "cancelled" and exc.code != grpc.StatusCode.CANCELLED:
                    raise cancelled("the caller cancelled the request; the rest of it was not run") from None
                raise
            scored += piece_rows
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _count_stop(self, reason: str, skipped: int, scored: int) -> None:
        if not self.metrics:
            return
        if skipped:
            self.metrics.slices_skipped.labels(reason).inc(skipped)
        if scored:
            self.metrics.stopped_images.labels(reason).observe(scored)

    def _run_slice(
        self, servable: Servable, signature_name: str, piece: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        if self.batcher is None:
            outputs = self._run_alone(servable, signature_name, piece)
            if self.metrics:
                self.metrics.batch_size.observe(max(1, batch_rows(piece) or 1))
            return outputs
        key = (
            id(servable),
            signature_name,
            tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(piece.items())),
        )
        return self.batcher.submit(
            key,
            piece,
            lambda x: servable.run_prepared(signature_name, x),
            timeout=self.remaining(),
            alive=getattr(self.local, "alive", None),
        )

    def _run_alone(
        self, servable: Servable, signature_name: str, prepared: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run unbatched once a run slot is free, unless the deadline passes (or the caller leaves) first."""
        if not self.run_slots.acquire(timeout=self.remaining()):
            raise deadline_exceeded("Deadline exceeded while waiting for the model; the request was not run")
        try:
            self.remaining()  # checked again: the wait may have used it up
            return servable.run_prepared(signature_name, prepared)
        finally:
            self.run_slots.release()

    def _log(
        self,
        servable: Servable,
        signature_name: str,
        label: str | None,
        outputs: dict,
        inputs: dict,
        images: list[bytes],
        seconds: float,
    ) -> None:
        """Hand the response's outputs to the request log and the referral keeper: no copy, no decoding here.

        Each image gets an id (image i of a request of several: `<id>-<i>`), shared by its request-log record and
        its kept copy; the REST front end answers it in X-Request-Id, so a pathologist can label that answer."""
        request = uuid.uuid4().hex if images else None
        self.local.request_id = request
        if self.request_logger is None and self.referral_keeper is None:
            return
        labels = [label] if label else self.manager.labels_of(servable.name, servable.version)
        meta = {
            "model": servable.name,
            "version": servable.version,
            "label": labels[0] if labels else None,
            "signature": signature_name,
            "latency_ms": round(seconds * 1000.0, 3),
        }
        if request:
            meta["request_ids"] = [request if len(images) == 1 else f"{request}-{i}" for i in range(len(images))]
        if self.referral_keeper is not None and images:
            self.referral_keeper.submit(meta, outputs, images)
        if self.request_logger is not None:
            self.request_logger.submit(meta, outputs, images if self.request_logger.store_images else None)


def _model_entries(options: ServerOptions) -> tuple[list[ModelEntry], Path | None]:
    if options.model_config_file:
        if options.model_base_path:
            raise ValueError("--model_config_file and --model_base_path cannot both be given")
        path = Path(options.model_config_file)
        return load_model_config(path), path
    if not options.model_base_path:
        raise ValueError("give --model_config_file, or --model_name and --model_base_path")
    return [ModelEntry(name=options.model_name, base_path=Path(options.model_base_path).absolute())], None


class Server:
    """gRPC + REST over one ServingCore."""

    def __init__(self, options: ServerOptions, open_request_log: RequestSinkOpener | None = None) -> None:
        self.options = options
        self.open_request_log = open_request_log
        self.grpc_port: int | None = None
        self.tensorflow_threads: dict[str, int] = {}
        self.rest_port: int | None = None
        self._grpc = None
        self._rest = None

    def start(self) -> Server:
        from serving.grpc_server import start_grpc_server
        from serving.rest_server import start_rest_server

        opts = self.options
        entries, config_path = _model_entries(opts)
        self.tensorflow_threads = apply_tensorflow_threads(
            opts.tensorflow_intra_op_parallelism, opts.tensorflow_inter_op_parallelism
        )
        monitoring = (
            load_monitoring_config(opts.monitoring_config_file) if opts.monitoring_config_file else MonitoringConfig()
        )
        ssl = parse_ssl_config(Path(opts.ssl_config_file).read_text()) if opts.ssl_config_file else None
        metrics = Metrics()
        batcher, params = None, None
        if opts.enable_batching:
            params = (
                load_batching_parameters(opts.batching_parameters_file)
                if opts.batching_parameters_file
                else BatchingParameters()
            )
        default_slice_size(opts.slice_size, params)  # a bad --slice_size is refused before any thread starts
        grpc_threads = handler_threads(opts.grpc_max_threads, params)
        rest_threads = handler_threads(opts.rest_api_num_threads, params)
        if params is not None:
            batcher = Batcher(params, on_batch=metrics.batch_size.observe)
            log.info("batching enabled: %s; %d gRPC and %d REST handler threads", params, grpc_threads, rest_threads)
        request_logger = None
        if opts.request_log_dir and self.open_request_log is None:
            log.warning("--request_log_dir given but no request-log writer was wired in; request log off")
        elif opts.request_log_dir:
            request_logger = self.open_request_log(
                opts.request_log_dir, opts.request_log_images, metrics.log_dropped.inc
            )
        manager = ModelManager(
            entries,
            warmup=opts.warmup,
            on_change=metrics.set_loaded,
            allow_unavailable_labels=opts.allow_version_labels_for_unavailable_models,
        )
        manager.limits = opts.limits  # the page (serving.page.routes) reads the server's limits here
        self.core = ServingCore(
            manager, opts.limits, metrics, batcher, request_logger, opts.max_concurrent_runs, opts.slice_size
        )
        if opts.keep_referred_images:
            from datetime import timedelta

            from components.cases.referred import ReferredImageKeeper, ReferredImages

            self.core.referral_keeper = ReferredImageKeeper(
                ReferredImages(
                    opts.keep_referred_images,
                    opts.keep_referred_max_bytes,
                    timedelta(days=opts.keep_referred_max_days),
                )
            )
            log.warning(
                "keeping referred images in %s (patient data: see docs/operations.md)", opts.keep_referred_images
            )
        try:
            if opts.cases_dir:
                from serving.case_intake import CaseIntake, CaseIntakeOptions

                self.core.case_intake = CaseIntake(
                    CaseIntakeOptions(
                        opts.cases_dir, opts.cases_base_data, opts.cases_base_manifest, opts.keep_referred_images
                    )
                )
                manager.case_capture = True  # the page offers Confirm / Correct only then (serving.page.routes)
                log.info("accepting pathologist cases at POST /v1/cases into %s", opts.cases_dir)
            manager.start()
            manager.start_polling(
                opts.file_system_poll_wait_seconds, config_path, opts.model_config_file_poll_wait_seconds
            )
            self._grpc, self.grpc_port = start_grpc_server(self.core, opts.host, opts.port, grpc_threads, ssl)
            if opts.rest_api_port >= 0:  # TF Serving: 0 disables REST; here 0 picks a free port and -1 disables
                self._rest, self.rest_port = start_rest_server(
                    self.core, opts.host, opts.rest_api_port, rest_threads, monitoring, ssl
                )
        except BaseException:
            self.stop()  # nothing half-started keeps the process alive or a port bound
            raise
        log.info(
            "serving %s: gRPC %s:%s, REST %s:%s%s",
            ", ".join(manager.models()),
            opts.host,
            self.grpc_port,
            opts.host,
            self.rest_port,
            " (TLS)" if ssl else "",
        )
        return self

    def stop(self) -> None:
        """Stop both front ends, polling, batch threads and the request log."""
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        self.core.manager.stop()
        if self.core.batcher:
            self.core.batcher.stop()
        if self.core.request_logger:
            self.core.request_logger.close()
        if self.core.referral_keeper:
            self.core.referral_keeper.close()

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()
