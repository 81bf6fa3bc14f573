"""The request log: one JSON line per prediction, in rotating files, read back by the drift monitor.

Serving calls ``RequestLog(directory).append(record)`` for every image it scores.
A record holds what the monitor needs and nothing that identifies a patient:

    {"timestamp": "2026-11-25T21:00:00+00:00",   # UTC ISO 8601, filled in when absent
     "model": "leukemia", "version": 3, "label": "stable",   # served model, version, version label
     "predicted_label": "Pre",
     "confidences": {"Benign": 0.01, "Early": 0.02, "Pre": 0.95, "Pro": 0.02},
     "features": {...components.host_features.FEATURE_NAMES...}}

Only the keys in ALLOWED_KEYS are written (file names, paths, client addresses
and any other field are dropped), and the image itself only when the log was
created with ``store_images=True`` (base64 under ``image_b64``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FILE_NAME = "requests.jsonl"
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
)


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


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
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if backup_count < 0:
            raise ValueError(f"backup_count must be >= 0, got {backup_count}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / FILE_NAME
        self.max_bytes = int(max_bytes)
        self.backup_count = int(backup_count)
        self.store_images = store_images
        self._lock = threading.Lock()

    def clean(self, record: dict) -> dict:
        """The record as it will be written: allowed keys only, timestamp set, image only if switched on."""
        out = {key: _plain(record[key]) for key in ALLOWED_KEYS if key in record and record[key] is not None}
        timestamp = out.get("timestamp")
        if isinstance(timestamp, datetime):
            timestamp = timestamp.astimezone(timezone.utc).isoformat() if timestamp.tzinfo else timestamp.replace(
                tzinfo=timezone.utc
            ).isoformat()
        out["timestamp"] = timestamp or _utc_now_iso()
        if self.store_images:
            image = record.get("image")
            if isinstance(image, (bytes, bytearray)):
                out["image_b64"] = base64.b64encode(bytes(image)).decode("ascii")
        return out

    def append(self, record: dict) -> None:
        """Write one record as a JSON line; rotates first when the file would pass max_bytes."""
        line = (json.dumps(self.clean(record), separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            # One write call of a whole line in append mode: readers never see half a record.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
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
    """The log files of a directory, oldest first."""
    directory = Path(directory)
    rotated = sorted(
        (p for p in directory.glob(f"{FILE_NAME}.*") if p.suffix.lstrip(".").isdigit()),
        key=lambda p: int(p.suffix.lstrip(".")),
        reverse=True,
    )
    current = directory / FILE_NAME
    return rotated + ([current] if current.exists() else [])


def _flatten(record: dict, class_names: tuple[str, ...]) -> dict:
    row = {key: record.get(key) for key in ("timestamp", "model", "version", "label", "predicted_label")}
    confidences = record.get("confidences") or {}
    if isinstance(confidences, list):  # tolerate a list in class order
        confidences = dict(zip(class_names, confidences))
    for name in class_names:
        row[f"confidence_{name}"] = confidences.get(name)
    row.update(record.get("features") or {})
    return row


def read_requests(directory: str | Path, since: timedelta | None = None) -> "pd.DataFrame":  # noqa: F821
    """All logged requests (newer than now - since, when given) as one row each.

    Columns: timestamp (UTC datetime), model, version, label, predicted_label,
    confidence_<class> for each class, and one column per image feature.
    Lines that are not valid JSON (a crash mid-write) are skipped with a warning.
    """
    import pandas as pd

    from components.domain import CLASS_NAMES
    from components.host_features import FEATURE_NAMES

    columns = ["timestamp", "model", "version", "label", "predicted_label"]
    columns += [f"confidence_{c}" for c in CLASS_NAMES] + list(FEATURE_NAMES)
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
        log.warning("skipped %d unreadable line(s) in %s", skipped, directory)
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype="float64" if column not in columns[:5] else "object")
    frame = frame[columns + [c for c in frame.columns if c not in columns]]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce", format="ISO8601")
    frame = frame.dropna(subset=["timestamp"])
    if since is not None:
        cutoff = pd.Timestamp(datetime.now(timezone.utc) - since)
        frame = frame[frame["timestamp"] >= cutoff]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
