"""Server-side dynamic batching, configured like TF Serving (BatchingParameters text proto).

Requests for the same servable and signature are queued; a batch thread takes up to max_batch_size
rows once that many are waiting or batch_timeout_micros has passed since the oldest arrived, runs
them as one call and splits the outputs. When a merged batch fails (one request's image does not
decode, say), its requests are run one by one, so only the bad one gets the error. A queue holds at most max_enqueued_batches * max_batch_size
rows: beyond that a request is refused with RESOURCE_EXHAUSTED, so memory stays bounded.

Deadlines are honoured end to end: a request whose deadline passes while queued is taken out of the
queue and never run, the remaining deadline is checked again just before a batch runs, and a batch
whose callers have all gone (deadline passed, or the RPC cancelled) is not started.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from serving.errors import deadline_exceeded, detached_error, invalid_argument, resource_exhausted

log = logging.getLogger(__name__)

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
EXPIRED = "Deadline exceeded while waiting in the batch queue; the request was not run"


@dataclass(frozen=True)
class BatchingParameters:
    """The fields of tensorflow.serving.BatchingParameters this server uses (TF Serving's defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4


_FIELD = re.compile(r"(\w+)\s*(?::\s*)?\{\s*value\s*:\s*(-?\d+)\s*\}|(\w+)\s*:\s*(-?\d+)")
_KNOWN = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
# Fields of BatchingParameters that are accepted (TF Serving reads them) but have no effect here.
_IGNORED = ("allowed_batch_sizes", "pad_variable_length_inputs", "thread_pool_name", "enable_large_batch_splitting",
            "max_execution_batch_size")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parse TF Serving's batching parameters text format (`max_batch_size { value: 32 }`)."""
    try:  # the official proto when the installed tensorflow_serving ships it
        from google.protobuf import text_format
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2  # type: ignore

        msg = text_format.Parse(text, session_bundle_config_pb2.BatchingParameters())
        values = {k: getattr(msg, k).value for k in _KNOWN if msg.HasField(k)}
        return _validated(values)
    except ImportError:
        pass
    stripped = re.sub(r"#.*", "", text)
    values: dict[str, int] = {}
    for m in _FIELD.finditer(stripped):
        name, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if name in _KNOWN:
            values[name] = int(value)
        elif name not in _IGNORED and name != "value":
            raise ValueError(f"batching parameters: unknown field {name!r}; expected one of {', '.join(_KNOWN)}")
    leftovers = _FIELD.sub("", stripped)
    leftovers = re.sub(r"\b(" + "|".join(_IGNORED) + r")\b\s*:?\s*(\{[^}]*\}|\"[^\"]*\"|\S+)", "", leftovers).strip()
    if leftovers:
        raise ValueError(f"batching parameters: cannot parse {leftovers[:60]!r}")
    return _validated(values)


def _validated(values: dict[str, int]) -> BatchingParameters:
    params = BatchingParameters(**values)
    for name in _KNOWN:
        minimum = 0 if name == "batch_timeout_micros" else 1
        if getattr(params, name) < minimum:
            raise ValueError(f"batching parameters: {name} must be >= {minimum}, got {getattr(params, name)}")
    return params


def load_batching_parameters(path: str | Path) -> BatchingParameters:
    """Read a batching parameters file."""
    return parse_batching_parameters(Path(path).read_text())


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    runner: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    deadline: float | None = None  # time.monotonic() by which the caller wants an answer
    alive: Callable[[], bool] | None = None  # False once the caller has gone (e.g. gRPC context.is_active)
    abandoned: bool = False  # the caller stopped waiting

    def gone(self, now: float) -> bool:
        """The caller will not read the result: deadline passed, cancelled, or stopped waiting."""
        if self.abandoned or (self.deadline is not None and now >= self.deadline):
            return True
        return self.alive is not None and not self.alive()


@dataclass
class _Queue:
    tasks: deque = field(default_factory=deque)
    rows: int = 0


class Batcher:
    """Shared batch scheduler: one queue per key (servable, signature, input layout), shared batch threads."""

    def __init__(self, params: BatchingParameters, on_batch: Callable[[int], None] | None = None) -> None:
        self.params = params
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._queues: dict[Any, _Queue] = {}
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True) for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: Any, inputs: dict[str, np.ndarray], runner: Callable[[dict], dict], timeout: float | None = None,
               alive: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """Queue one request (all inputs share a first dimension) and wait for its slice of the batch output.

        `timeout` is the caller's remaining deadline in seconds; `alive()` says whether the caller is still there.
        """
        if timeout is not None and timeout <= 0:
            raise deadline_exceeded(EXPIRED)
        sizes = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            return runner(inputs)  # not batchable (scalars or ragged first dims): run alone
        size = sizes.pop()
        max_rows = self.params.max_batch_size
        if size > max_rows:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {max_rows}")
        deadline = time.monotonic() + timeout if timeout is not None else None
        task = _Task(inputs=inputs, size=size, runner=runner, deadline=deadline, alive=alive)
        with self._cond:
            if self._stopped:
                raise resource_exhausted("batch scheduler is stopped")
            queue = self._queues.setdefault(key, _Queue())
            self._drop_gone(queue, time.monotonic())  # expired work must not make room-checks fail
            if queue.rows + size > max_rows * self.params.max_enqueued_batches:
                raise resource_exhausted(QUEUE_FULL)
            queue.tasks.append(task)
            queue.rows += size
            self._cond.notify()
        if not task.done.wait(timeout):
            with self._cond:
                task.abandoned = True  # a batch thread that has not taken it yet drops it
                if not task.done.is_set():
                    raise deadline_exceeded(EXPIRED)
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    @staticmethod
    def _drop_gone(queue: _Queue, now: float) -> None:
        """Under the lock: fail and remove the queued tasks whose callers have gone."""
        if not any(t.gone(now) for t in queue.tasks):
            return
        kept: deque = deque()
        for t in queue.tasks:
            if t.gone(now):
                queue.rows -= t.size
                t.error = deadline_exceeded(EXPIRED)
                t.done.set()
            else:
                kept.append(t)
        queue.tasks = kept

    def _take(self) -> list[_Task] | None:
        """Under the lock: pop one ready batch, or None after waiting (stopped -> [])."""
        timeout_s = self.params.batch_timeout_micros / 1e6
        now = time.monotonic()
        best_key, wait = None, None
        for key, q in list(self._queues.items()):
            self._drop_gone(q, now)
            if not q.tasks:
                del self._queues[key]
                continue
            age = now - q.tasks[0].enqueued
            if q.rows >= self.params.max_batch_size or age >= timeout_s:
                best_key = key
                break
            remaining = timeout_s - age
            wait = remaining if wait is None else min(wait, remaining)
        if best_key is None:
            self._cond.wait(wait)
            return None
        q = self._queues[best_key]
        batch, rows = [], 0
        while q.tasks and rows + q.tasks[0].size <= self.params.max_batch_size:
            task = q.tasks.popleft()
            batch.append(task)
            rows += task.size
        q.rows -= rows
        if not q.tasks:
            del self._queues[best_key]  # no per-key leak across hot swaps
        return batch

    def _worker(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                batch = self._take()
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Task]) -> None:
        now = time.monotonic()  # the remaining deadlines, checked again just before the work starts
        for t in batch:
            if t.gone(now):
                t.error = deadline_exceeded(EXPIRED)
                t.done.set()
        batch = [t for t in batch if not t.done.is_set()]
        if not batch:
            return  # every caller has gone: start nothing
        if len(batch) > 1:
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
                outputs = batch[0].runner(merged)
            except Exception:  # noqa: BLE001 - one bad request must not fail the others: run each alone
                log.info("a batch of %d requests failed; running them one by one", len(batch))
                for t in batch:
                    self._run([t])
                return
            try:
                self._record(sum(t.size for t in batch))
                start = 0
                for t in batch:
                    t.result = {k: v[start : start + t.size] for k, v in outputs.items()}
                    start += t.size
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                for t in batch:
                    t.error = detached_error(exc)
            finally:
                for t in batch:
                    t.done.set()
            return
        (task,) = batch
        try:
            task.result = task.runner(task.inputs)
            self._record(task.size)
        except BaseException as exc:  # noqa: BLE001 - the waiting request gets the error
            task.error = detached_error(exc)
        finally:
            task.done.set()

    def _record(self, rows: int) -> None:
        if self._on_batch:
            self._on_batch(rows)

    def stop(self) -> None:
        """Stop the batch threads; queued requests fail."""
        with self._cond:
            self._stopped = True
            pending = [t for q in self._queues.values() for t in q.tasks]
            self._queues.clear()
            self._cond.notify_all()
        for t in pending:
            t.error = resource_exhausted("batch scheduler is stopped")
            t.done.set()
