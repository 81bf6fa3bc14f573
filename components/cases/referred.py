"""Referred served images, kept (opt-in) for a pathologist to label: content-addressed, size- and age-limited.

The server keeps an image only when the model referred it (`refer` output true) and only when started
with `--keep_referred_images DIR`. Layout of DIR:

    images/<sha256>.<ext>   each image once, whatever number of requests sent it
    index.jsonl             one line per kept image: request_id, sha256, file, kept_at, model, version,
                            predicted_label, ood_score, prediction_set (class names), refer

Limits: the oldest images go first when the folder holds more than `max_bytes` of images, and any image
older than `max_age` goes (checked on each write and at start). The folder is created private (0700):
these are patient images (docs/operations.md, "Keeping referred images").
"""

from __future__ import annotations

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

from components import atomic_files, domain

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
SERVED_SITE = "served"  # the site of a case labelled from a kept referral when none is given
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_AGE = timedelta(days=30)
MAX_PENDING = 256  # referred images waiting for the keeper's thread; more are dropped and counted
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"BM", ".bmp"), (b"GIF8", ".gif"))


def default_kept_dir() -> Path:
    """$LEUKOFLOW_HOME/referred"""
    from components.home import home

    return home() / "referred"


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their first bytes (validation reads files by suffix)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".bin")


class ReferredImages:
    """The kept-images folder: write (the server's keeper thread) and read (`cases add`, the queue)."""

    def __init__(
        self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, max_age: timedelta = DEFAULT_MAX_AGE
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the size limit must be positive, got {max_bytes} bytes")
        if max_age <= timedelta(0):
            raise ValueError(f"the age limit must be positive, got {max_age}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.max_age = max_age

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX

    def keep(self, image: bytes, record: dict[str, Any], now: datetime | None = None) -> str:
        """Store one referred image (once per content) and index it under its request id; returns its sha256."""
        import hashlib

        now = now or datetime.now(UTC)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        sha = hashlib.sha256(image).hexdigest()
        path = self.directory / "images" / f"{sha}{image_suffix(image)}"
        if not path.exists():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            atomic_files.replace_file(path, lambda tmp: tmp.write_bytes(image))
            os.chmod(path, 0o600)
        else:
            os.utime(path)  # seen again: it ages from now
        line = {**record, "sha256": sha, "file": f"images/{path.name}", "kept_at": now.isoformat(timespec="seconds")}
        fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())  # one write: whole lines only
        finally:
            os.close(fd)
        self.prune(now)
        return sha

    def prune(self, now: datetime | None = None) -> dict[str, int]:
        """Remove images past the age limit, then the oldest until under the size limit; drop their index lines."""
        now = now or datetime.now(UTC)
        images = sorted(
            (p for p in (self.directory / "images").glob("*") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        cutoff = (now - self.max_age).timestamp()
        removed = {"expired": 0, "over_size": 0}
        total = sum(p.stat().st_size for p in images)
        for path in images:
            reason = "expired" if path.stat().st_mtime < cutoff else "over_size" if total > self.max_bytes else None
            if reason is None:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            removed[reason] += 1
        if any(removed.values()) and self.index_path.exists():
            kept = [e for e in self._lines() if (self.directory / e.get("file", "")).is_file()]
            atomic_files.write_text(self.index_path, "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept))
            os.chmod(self.index_path, 0o600)
        return removed

    def _lines(self) -> list[dict]:
        if not self.index_path.exists():
            return []
        entries = []
        for line in self.index_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
            if isinstance(entry, dict) and entry.get("request_id"):
                entries.append(entry)
        return entries

    def entries(self) -> list[dict]:
        """Every kept referral whose image is still here, with `path` set, one per request id (the latest)."""
        latest: dict[str, dict] = {}
        for entry in self._lines():
            path = self.directory / entry.get("file", "")
            if path.is_file():
                latest[entry["request_id"]] = {**entry, "path": path}
        return list(latest.values())

    def find(self, request_id: str) -> dict:
        """The kept referral of one request id; KeyError naming the folder when there is none."""
        for entry in self.entries():
            if entry["request_id"] == request_id:
                return entry
        raise KeyError(
            f"no kept referred image for request id {request_id!r} in {self.directory} (never referred, not "
            "kept because the server ran without --keep_referred_images, or removed by the size or age limit)"
        )


class ReferredImageKeeper:
    """The server's hook: picks the referred images of a response and keeps them off the request path.

    `submit(meta, outputs, images)` runs on the request thread: it only reads the `refer` output and queues
    the referred images (bounded; beyond MAX_PENDING they are dropped and counted). A thread writes them.
    """

    def __init__(self, store: ReferredImages) -> None:
        self.store = store
        self.kept = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        try:
            self.store.prune()
        except OSError as exc:
            log.warning("cannot prune the kept referred images in %s: %s", store.directory, exc)
        self._thread = threading.Thread(target=self._drain, name="keep-referred", daemon=True)
        self._thread.start()

    def submit(self, meta: dict, outputs: dict, images: list[bytes]) -> None:
        if "refer" not in outputs or not images:
            return
        refer = np.asarray(outputs["refer"]).reshape(-1)
        ids = meta.get("request_ids") or []
        for i in np.flatnonzero(refer[: len(images)]):
            record = _record(meta, outputs, int(i), ids[i] if i < len(ids) else None)
            try:
                self._queue.put_nowait((images[i], record))
            except queue.Full:
                self.dropped += 1

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.store.keep(*item)
                self.kept += 1
            except OSError as exc:  # a full disk never stops serving
                self.dropped += 1
                log.warning("cannot keep a referred image in %s: %s", self.store.directory, exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written or dropped (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass
        self._thread.join(timeout=10)


def _record(meta: dict, outputs: dict, i: int, request_id: str | None) -> dict:
    """What the review queue needs about one referred image: ids, the model, and why it was referred."""

    def value(name: str):
        if name not in outputs:
            return None
        array = np.asarray(outputs[name])
        return array[i].tolist() if array.ndim else array.tolist()

    record = {
        "request_id": request_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{i}",
        "model": meta.get("model"),
        "version": meta.get("version"),
        "ood_score": value("ood_score"),
        "refer": True,
    }
    probabilities = value("probabilities")
    if probabilities is not None and len(probabilities) == domain.NUM_CLASSES:
        record["predicted_label"] = domain.CLASS_NAMES[int(np.argmax(probabilities))]
    members = value("prediction_set")
    if members is not None and len(members) == domain.NUM_CLASSES:
        record["prediction_set"] = [c for c, inside in zip(domain.CLASS_NAMES, members) if inside]
    return record
