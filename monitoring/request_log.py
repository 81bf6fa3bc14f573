"""The request log: one JSON line per prediction, in rotating files, read back by the drift monitor.

Serving and the logging proxy hand every response to a ``RequestLogWriter`` (injected into the server by
the `leukoflow serve` entry point, pipelines/serve_cli.py), which turns it into one record per image off
the request path and appends the lines with ``RequestLog(directory)``.
A record holds what the monitor needs and nothing that identifies a patient:

    {"timestamp": "2026-11-25T21:00:00+00:00",   # UTC ISO 8601, filled in when absent
     "model": "leukemia", "version": 3, "label": "stable",   # served model, version, version label
     "predicted_label": "Pre",
     "confidences": {"Benign": 0.01, "Early": 0.02, "Pre": 0.95, "Pro": 0.02},
     "features": {...components.host_features.FEATURE_NAMES...},
     "outputs": {"ood_score": 41.2, "in_distribution": true, "refer": false}}  # a calibrated model only

Only the keys in ALLOWED_KEYS are written (file names, paths, client addresses
and any other field are dropped), and the image itself only when the log was
created with ``store_images=True`` (base64 under ``image_b64``).
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import queue
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LOG_SUFFIX = ".jsonl"
FILE_NAME = "requests" + LOG_SUFFIX
SKIPPED_LINES = "skipped_lines"  # frame.attrs key: torn or unreadable lines read_requests skipped
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 20

# A whitelist, not a blacklist: a field someone adds later is not logged until it is listed here.
ALLOWED_KEYS: tuple[str, ...] = (
    "timestamp",
    "model",
    "version",
    "label",
    "predicted_label",
    "confidences",
    "features",
    "signature",
    "latency_ms",
    "low_confidence",
    "outputs",
)


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and nested containers -> JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class RequestLog:
    """Thread-safe appender of JSON lines to ``directory/requests.jsonl`` with size-based rotation."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backup_count: int = DEFAULT_BACKUP_COUNT,
        store_images: bool = False,
        file_name: str = FILE_NAME,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if backup_count < 0:
            raise ValueError(f"backup_count must be >= 0, got {backup_count}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not file_name.endswith(LOG_SUFFIX) or "/" in file_name:
            raise ValueError(f"log file name must be a plain name ending in {LOG_SUFFIX}, got {file_name!r}")
        self.path = self.directory / file_name
        self.max_bytes = int(max_bytes)
        self.backup_count = int(backup_count)
        self.store_images = store_images
        self._lock = threading.Lock()

    def clean(self, record: dict) -> dict:
        """The record as it will be written: allowed keys only, timestamp set, image only if switched on."""
        out = {key: _plain(record[key]) for key in ALLOWED_KEYS if key in record and record[key] is not None}
        timestamp = out.get("timestamp")
        if isinstance(timestamp, datetime):
            timestamp = (
                timestamp.astimezone(UTC).isoformat() if timestamp.tzinfo else timestamp.replace(tzinfo=UTC).isoformat()
            )
        out["timestamp"] = timestamp or _utc_now_iso()
        if self.store_images:
            image = record.get("image")
            if isinstance(image, (bytes, bytearray)):
                out["image_b64"] = base64.b64encode(bytes(image)).decode("ascii")
        return out

    def line(self, record: dict) -> bytes:
        """One record as a complete JSON line."""
        return (json.dumps(self.clean(record), separators=(",", ":")) + "\n").encode("utf-8")

    def append(self, record: dict) -> None:
        """Write one record as a JSON line; rotates first when the file would pass max_bytes."""
        self.append_lines(self.line(record))

    def append_lines(self, data: bytes) -> None:
        """Append complete lines in one write; on any failure the file is cut back, so no record is torn.

        Raises OSError (the caller counts the records as dropped).
        """
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                start = os.fstat(fd).st_size
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
                except OSError:
                    try:
                        os.ftruncate(fd, start)  # cut a partial record back off
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        """requests.jsonl -> .1 -> .2 ...; the oldest beyond backup_count is deleted."""
        if self.backup_count == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.directory / f"{FILE_NAME}.{self.backup_count}"
        oldest.unlink(missing_ok=True)
        for index in range(self.backup_count - 1, 0, -1):
            source = self.directory / f"{FILE_NAME}.{index}"
            if source.exists():
                source.replace(self.directory / f"{FILE_NAME}.{index + 1}")
        self.path.replace(self.directory / f"{FILE_NAME}.1")


def log_files(directory: str | Path) -> list[Path]:
    """Every log file of a directory (one per writer, e.g. per pod on a shared volume), oldest first per writer."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out: list[Path] = []
    for current in sorted(directory.glob(f"*{LOG_SUFFIX}")):
        rotated = sorted(
            (p for p in directory.glob(f"{current.name}.*") if p.suffix.lstrip(".").isdigit()),
            key=lambda p: int(p.suffix.lstrip(".")),
            reverse=True,
        )
        out += rotated + [current]
    return out


# The referral outputs a calibrated model's records carry under "outputs" (components/train/export.py),
# flattened into columns of the same names for the drift monitor's out-of-distribution rate.
REFERRAL_COLUMNS: tuple[str, ...] = ("ood_score", "in_distribution", "refer")


def _flatten(record: dict, class_names: tuple[str, ...]) -> dict:
    row = {key: record.get(key) for key in ("timestamp", "model", "version", "label", "predicted_label")}
    confidences = record.get("confidences") or {}
    if isinstance(confidences, list):  # tolerate a list in class order
        confidences = dict(zip(class_names, confidences))
    for name in class_names:
        row[f"confidence_{name}"] = confidences.get(name)
    row.update(record.get("features") or {})
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    for name in REFERRAL_COLUMNS:  # None for a record without them (an older model, or not logged)
        row[name] = outputs.get(name)
    return row


def read_requests(directory: str | Path, since: timedelta | None = None) -> pd.DataFrame:  # noqa: F821
    """All logged requests (newer than now - since, when given) as one row each.

    Columns: timestamp (UTC datetime), model, version, label, predicted_label,
    confidence_<class> for each class, one column per image feature, and REFERRAL_COLUMNS
    (ood_score, in_distribution, refer; None where a record has no such output).
    Lines that are not valid JSON (a torn write) are skipped, counted in `frame.attrs[SKIPPED_LINES]`
    and warned about.
    """
    import pandas as pd

    from components.domain import CLASS_NAMES
    from components.host_features import FEATURE_NAMES

    columns = ["timestamp", "model", "version", "label", "predicted_label"]
    columns += [f"confidence_{c}" for c in CLASS_NAMES] + list(FEATURE_NAMES) + list(REFERRAL_COLUMNS)
    rows: list[dict] = []
    skipped = 0
    for path in log_files(directory):
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    skipped += 1
                    continue
                if isinstance(record, dict):
                    rows.append(_flatten(record, CLASS_NAMES))
    if skipped:
        log.warning("skipped %d torn or unreadable line(s) in %s", skipped, directory)
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.Series(
                dtype="float64" if column not in columns[:5] + ["in_distribution", "refer"] else "object"
            )
    frame = frame[columns + [c for c in frame.columns if c not in columns]]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce", format="ISO8601")
    frame = frame.dropna(subset=["timestamp"])
    if since is not None:
        cutoff = pd.Timestamp(datetime.now(UTC) - since)
        frame = frame[frame["timestamp"] >= cutoff]
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame.attrs[SKIPPED_LINES] = skipped
    return frame


# ---------------------------------------------------------------- the writer serving and the proxy feed

# Outputs copied into a record when the signature has them, besides probabilities and the features:
# the lead's out-of-distribution and referral outputs (components/train/export.py).
DEFAULT_LOGGED_OUTPUTS: tuple[str, ...] = ("ood_score", "in_distribution", "refer")
DEFAULT_MAX_PENDING = 4096  # requests waiting for the writer; beyond this, records are dropped and counted
DEFAULT_MAX_PENDING_IMAGE_BYTES = 64 * 1024 * 1024  # only with store_images
WARNING_INTERVAL_S = 60.0  # at most one warning a minute about drops or write errors
RETRY_INTERVAL_S = 5.0  # an unusable folder is tried again this often; records in between are dropped


# TensorProto dtype enum -> (numpy dtype, the repeated field holding values when tensor_content is empty).
_TENSOR_TYPES: dict[int, tuple[Any, str]] = {
    1: (np.float32, "float_val"),
    2: (np.float64, "double_val"),
    3: (np.int32, "int_val"),
    4: (np.uint8, "int_val"),
    9: (np.int64, "int64_val"),
    10: (np.bool_, "bool_val"),
    7: (object, "string_val"),
}


def tensor_to_array(proto: Any) -> np.ndarray:
    """A TensorProto as numpy, without importing TensorFlow (the proxy sidecar stays small).

    Covers the dtypes a leukoflow signature returns (float, double, int, bool, string).
    """
    if proto.dtype not in _TENSOR_TYPES:
        raise ValueError(f"tensor dtype {proto.dtype} is not logged")
    dtype, field_name = _TENSOR_TYPES[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content and dtype is not object:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    values = np.array(list(getattr(proto, field_name)), dtype=dtype)
    count = int(np.prod(shape)) if shape else 1
    if values.size == 1 and count != 1:  # TensorFlow repeats a single value to fill the shape
        values = np.repeat(values, count)
    return values.reshape(shape)


def _as_array(value: Any) -> np.ndarray:
    """numpy array of a numpy value, a list, or a TensorProto (the proxy hands over the response's protos)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "tensor_shape"):
        return tensor_to_array(value)
    return np.asarray(value)


def records_from_outputs(
    meta: dict,
    outputs: Any,
    images: list[bytes] | None = None,
    logged_outputs: tuple[str, ...] = DEFAULT_LOGGED_OUTPUTS,
) -> list[dict]:
    """Per image, a record of numbers copied from one response's outputs: nothing is computed but an argmax.

    `meta` holds model, version, label, signature, latency_ms; `outputs` maps output names to arrays or
    TensorProtos (probabilities or scores, the feature_* outputs, any of `logged_outputs`).
    """
    from components.domain import CLASS_NAMES
    from components.image_features import FEATURE_NAMES, OUTPUT_PREFIX

    name = "probabilities" if "probabilities" in outputs else "scores" if "scores" in outputs else None
    if name is None:
        return []
    probs = _as_array(outputs[name])
    if probs.ndim != 2 or probs.shape[1] != len(CLASS_NAMES):
        return []
    features = {
        f: _as_array(outputs[OUTPUT_PREFIX + f]).reshape(-1) for f in FEATURE_NAMES if OUTPUT_PREFIX + f in outputs
    }
    extras = {o: _as_array(outputs[o]) for o in logged_outputs if o in outputs}
    records = []
    for i, row in enumerate(probs):
        record = {
            **meta,
            "predicted_label": CLASS_NAMES[int(np.argmax(row))],
            "confidences": {c: float(p) for c, p in zip(CLASS_NAMES, row)},
        }
        if len(features) == len(FEATURE_NAMES):
            record["features"] = {f: float(v[i]) for f, v in features.items()}
        if extras:
            record["outputs"] = {o: _plain(v[i]) if v.ndim else _plain(v) for o, v in extras.items()}
        if images is not None and i < len(images):
            record["image"] = images[i]
        records.append(record)
    return records


class RequestLogWriter:
    """Serving's and the proxy's request-log writer: copies numbers off the request path, never blocks it.

    `submit(meta, outputs, images)` queues one response; `outputs` maps output names to arrays or
    TensorProtos, or is a callable returning (more meta, outputs) that the writer's thread calls, so the
    proxy parses nothing it need not on the request path. The queue is bounded: when full, its records are
    dropped and counted, never held). A background thread turns responses into records and appends
    whole lines. Monitoring never stops serving: an unusable folder or a full disk drops records,
    counts them (`dropped`, `on_drop(n)`), warns at most once a minute, and is retried.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        store_images: bool = False,
        file_name: str = FILE_NAME,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_image_bytes: int = DEFAULT_MAX_PENDING_IMAGE_BYTES,
        logged_outputs: tuple[str, ...] = DEFAULT_LOGGED_OUTPUTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backup_count: int = DEFAULT_BACKUP_COUNT,
        on_drop: Any = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.directory = Path(directory)
        self.store_images = store_images
        self.logged_outputs = tuple(logged_outputs)
        self.written = 0
        self.dropped = 0
        self._file_name, self._max_bytes, self._backup_count = file_name, max_bytes, backup_count
        self._on_drop = on_drop
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._max_image_bytes = max_pending_image_bytes
        self._image_bytes = 0
        self._pending = 0  # queued responses not yet written or dropped
        self._lock = threading.Lock()
        self._last_warning = 0.0
        self._warned_unusable = False
        self._next_try = 0.0
        self._log: RequestLog | None = None
        self._open()  # an unusable folder is said once here; serving starts all the same
        self._thread = threading.Thread(target=self._drain, name="request-log", daemon=True)
        self._thread.start()

    def _open(self) -> RequestLog | None:
        if self._log is not None:
            return self._log
        if time.monotonic() < self._next_try:
            return None
        try:
            self._log = RequestLog(
                self.directory,
                max_bytes=self._max_bytes,
                backup_count=self._backup_count,
                store_images=self.store_images,
                file_name=self._file_name,
            )
            if not os.access(self.directory, os.W_OK):
                raise PermissionError(errno.EACCES, "not writable", str(self.directory))
            if self._warned_unusable:
                log.warning("request log folder %s is usable again", self.directory)
                self._warned_unusable = False
        except OSError as exc:
            self._log = None
            self._next_try = time.monotonic() + RETRY_INTERVAL_S
            if not self._warned_unusable:
                self._warned_unusable = True
                log.warning(
                    "request log folder %s is unusable (%s); serving goes on, records are dropped and "
                    "counted until it is usable",
                    self.directory,
                    exc,
                )
        return self._log

    def drop(self, count: int, why: str) -> None:
        """Count records lost before they reached the writer or in it; warns at most once a minute."""
        if count <= 0:
            return
        with self._lock:
            self.dropped += count
        if self._on_drop:
            self._on_drop(count)
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL_S:
            self._last_warning = now
            log.warning("request log: %s; %d record(s) dropped so far", why, self.dropped)

    def submit(self, meta: dict, outputs: Any, images: list[bytes] | None = None) -> None:
        """Queue one response for logging; never blocks (a full queue drops its records)."""
        size = sum(len(i) for i in images) if images and self.store_images else 0
        with self._lock:
            fits = self._image_bytes + size <= self._max_image_bytes
            if fits:
                try:
                    self._queue.put_nowait((meta, outputs, images if self.store_images else None, size))
                    self._image_bytes += size
                    self._pending += 1
                except queue.Full:
                    fits = False
        if not fits:
            probs = outputs.get("probabilities", outputs.get("scores")) if isinstance(outputs, dict) else None
            rows = np.shape(probs)[0] if isinstance(probs, np.ndarray) and np.ndim(probs) else 1
            self.drop(int(rows), "the writer is behind (queue full)")

    def _drain(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 256:  # write what has gathered in one go: fewer syscalls under load
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in items)
            work = [item for item in items if item is not None]
            try:
                self._write(work)
            finally:
                with self._lock:
                    self._pending -= len(work)
            if stop:
                return

    def _write(self, items: list) -> None:
        records: list[dict] = []
        for meta, outputs, images, size in items:
            with self._lock:
                self._image_bytes -= size
            try:
                if callable(outputs):  # the proxy defers parsing the response to this thread
                    more, outputs = outputs()
                    meta = {**meta, **more}
                records += records_from_outputs(meta, outputs, images, self.logged_outputs)
            except Exception as exc:  # noqa: BLE001 - a malformed response is dropped, never fatal
                self.drop(1, f"unreadable response ({exc})")
        if not records:
            return
        target = self._open()
        if target is None:
            self.drop(len(records), f"folder {self.directory} is unusable")
            return
        try:
            target.append_lines(b"".join(target.line(r) for r in records))
            self.written += len(records)
        except OSError as exc:
            self.drop(len(records), f"cannot write {target.path} ({exc.strerror or exc})")
            if not self.directory.is_dir():
                self._log = None  # the folder went away: recreate it on a later try

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every response queued so far is written or dropped (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass
        self._thread.join(timeout=10)
