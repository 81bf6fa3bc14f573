"""Server-side dynamic batching, configured like TF Serving (BatchingParameters text proto).

Requests for the same servable and signature are queued; a batch thread takes up to max_batch_size
rows once that many are waiting or batch_timeout_micros has passed since the oldest arrived, runs
them as one call and splits the outputs. With enable_large_batch_splitting (as in TF Serving), a
request may hold up to max_batch_size rows but runs in batches of at most max_execution_batch_size:
it is cut into pieces that fill the open batch first, and its answer is put back together in order.
That bounds how long one started batch holds a core, whatever size the clients send. When a merged
batch fails (one request's image does not decode, say), its requests are run one by one, so only the
bad one gets the error. A queue holds at most max_enqueued_batches batches of the size that runs
(execution_batch_size): beyond that a request is refused with RESOURCE_EXHAUSTED, so memory stays bounded.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import deadline_exceeded, detached_error, invalid_argument, resource_exhausted

log = logging.getLogger(__name__)

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
EXPIRED = "Deadline exceeded while waiting in the batch queue; the request was not run"
EXPIRED_STARTED = "Deadline exceeded while the request's batch ran"


@dataclass(frozen=True)
class BatchingParameters:
    """The fields of tensorflow.serving.BatchingParameters this server uses (TF Serving's defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None  # with splitting; TF Serving's default is max_batch_size

    @property
    def execution_batch_size(self) -> int:
        """The most rows one batch runs: max_execution_batch_size when splitting is on, else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size


_FIELD = re.compile(r"(\w+)\s*(?::\s*)?\{\s*value\s*:\s*(-?\d+|true|false)\s*\}|(\w+)\s*:\s*(-?\d+|true|false)")
_KNOWN = (
    "max_batch_size",
    "batch_timeout_micros",
    "max_enqueued_batches",
    "num_batch_threads",
    "max_execution_batch_size",
)
_FLAGS = ("enable_large_batch_splitting",)
# Fields of BatchingParameters that are accepted (TF Serving reads them) but have no effect here.
_IGNORED = ("allowed_batch_sizes", "pad_variable_length_inputs", "thread_pool_name")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parse TF Serving's batching parameters text format (`max_batch_size { value: 32 }`)."""
    try:  # the official proto when the installed tensorflow_serving ships it
        from google.protobuf import text_format
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2  # type: ignore

        msg = text_format.Parse(text, session_bundle_config_pb2.BatchingParameters())
        values = {k: getattr(msg, k).value for k in (*_KNOWN, *_FLAGS) if msg.HasField(k)}
        return _validated(values)
    except ImportError:
        pass
    stripped = re.sub(r"#.*", "", text)
    values: dict[str, int | bool] = {}
    for m in _FIELD.finditer(stripped):
        name, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if name in _KNOWN and value not in ("true", "false"):
            values[name] = int(value)
        elif name in _FLAGS and value in ("true", "false"):
            values[name] = value == "true"
        elif name in (*_KNOWN, *_FLAGS):
            raise ValueError(f"batching parameters: {name} cannot be {value}")
        elif name not in _IGNORED and name != "value":
            raise ValueError(
                f"batching parameters: unknown field {name!r}; expected one of {', '.join((*_KNOWN, *_FLAGS))}"
            )
    leftovers = _FIELD.sub("", stripped)
    leftovers = re.sub(r"\b(" + "|".join(_IGNORED) + r")\b\s*:?\s*(\{[^}]*\}|\"[^\"]*\"|\S+)", "", leftovers).strip()
    if leftovers:
        raise ValueError(f"batching parameters: cannot parse {leftovers[:60]!r}")
    return _validated(values)


def _validated(values: dict[str, int | bool]) -> BatchingParameters:
    params = BatchingParameters(**values)  # type: ignore[arg-type]
    for name in _KNOWN:
        minimum = 0 if name == "batch_timeout_micros" else 1
        value = getattr(params, name)
        if value is not None and value < minimum:
            raise ValueError(f"batching parameters: {name} must be >= {minimum}, got {value}")
    if params.execution_batch_size > params.max_batch_size:
        raise ValueError(
            f"batching parameters: max_execution_batch_size ({params.max_execution_batch_size}) "
            f"must be <= max_batch_size ({params.max_batch_size})"
        )
    if params.max_execution_batch_size is not None and not params.enable_large_batch_splitting:
        log.warning("batching parameters: max_execution_batch_size has no effect without enable_large_batch_splitting")
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
    taken: int = 0  # rows handed to batches so far (a split request is taken piece by piece)
    running: int = 0  # pieces in batches not yet finished
    parts: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # first row -> that piece's outputs

    def gone(self, now: float) -> bool:
        """The caller will not read the result: deadline passed, cancelled, stopped waiting, or already answered
        (a piece of a split request failed)."""
        if self.abandoned or self.done.is_set() or (self.deadline is not None and now >= self.deadline):
            return True
        return self.alive is not None and not self.alive()


@dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of one request, in one batch: the whole request unless it was split."""

    task: _Task
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def inputs(self, name: str) -> np.ndarray:
        array = self.task.inputs[name]
        return array if (self.start, self.stop) == (0, self.task.size) else array[self.start : self.stop]


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
            threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def submit(
        self,
        key: Any,
        inputs: dict[str, np.ndarray],
        runner: Callable[[dict], dict],
        timeout: float | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request (all inputs share a first dimension) and wait for its slice of the batch output.

        `timeout` is the caller's remaining deadline in seconds; `alive()` says whether the caller is still there.
        """
        if timeout is not None and timeout <= 0:
            raise deadline_exceeded(EXPIRED)
        sizes = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            return runner(inputs)  # not batchable (scalars or ragged first dims): run alone
        size = sizes.pop()
        self.check_size(size)
        deadline = time.monotonic() + timeout if timeout is not None else None
        task = _Task(inputs=inputs, size=size, runner=runner, deadline=deadline, alive=alive)
        with self._cond:
            if self._stopped:
                raise resource_exhausted("batch scheduler is stopped")
            queue = self._queues.setdefault(key, _Queue())
            self._drop_gone(queue, time.monotonic())  # expired work must not make room-checks fail
            if queue.rows + size > self.params.execution_batch_size * self.params.max_enqueued_batches:
                raise resource_exhausted(QUEUE_FULL)
            queue.tasks.append(task)
            queue.rows += size
            self._cond.notify()
        if not task.done.wait(timeout):
            with self._cond:
                task.abandoned = True  # a batch thread that has not taken it yet drops it
                if not task.done.is_set():
                    raise deadline_exceeded(EXPIRED_STARTED if task.taken else EXPIRED)
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def check_size(self, size: int) -> None:
        """A request may hold at most max_batch_size rows, as in TF Serving (whether or not it is sliced)."""
        if size > self.params.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {self.params.max_batch_size}"
            )

    @staticmethod
    def _drop_gone(queue: _Queue, now: float) -> None:
        """Under the lock: fail and remove the queued tasks whose callers have gone."""
        if not any(t.gone(now) for t in queue.tasks):
            return
        kept: deque = deque()
        for t in queue.tasks:
            if t.gone(now):
                queue.rows -= t.size - t.taken  # a split request may have pieces running already
                if not t.done.is_set():
                    t.error = deadline_exceeded(EXPIRED)
                    t.done.set()
            else:
                kept.append(t)
        queue.tasks = kept

    def _take(self) -> list[_Piece] | None:
        """Under the lock: pop one ready batch, or None after waiting (stopped -> [])."""
        timeout_s = self.params.batch_timeout_micros / 1e6
        capacity = self.params.execution_batch_size
        now = time.monotonic()
        best_key, wait = None, None
        for key, q in list(self._queues.items()):
            self._drop_gone(q, now)
            if not q.tasks:
                del self._queues[key]
                continue
            age = now - q.tasks[0].enqueued
            if q.rows >= capacity or age >= timeout_s:
                best_key = key
                break
            remaining = timeout_s - age
            wait = remaining if wait is None else min(wait, remaining)
        if best_key is None:
            self._cond.wait(wait)
            return None
        q = self._queues[best_key]
        batch: list[_Piece] = []
        rows = 0
        while q.tasks and rows < capacity:
            task = q.tasks[0]
            n = min(task.size - task.taken, capacity - rows)
            if n < task.size - task.taken and not self.params.enable_large_batch_splitting:
                break  # whole requests only: it waits for the next batch
            batch.append(_Piece(task, task.taken, task.taken + n))
            task.taken += n
            task.running += 1
            rows += n
            if task.taken == task.size:
                q.tasks.popleft()
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

    def _run(self, batch: list[_Piece]) -> None:
        now = time.monotonic()  # the remaining deadlines, checked again just before the work starts
        live = []
        for piece in batch:
            if piece.task.gone(now):
                self._finish(piece, error=deadline_exceeded(EXPIRED))
            else:
                live.append(piece)
        if not live:
            return  # every caller has gone: start nothing
        if len(live) > 1:
            try:
                merged = {k: np.concatenate([p.inputs(k) for p in live]) for k in live[0].task.inputs}
                outputs = live[0].task.runner(merged)
            except Exception:  # noqa: BLE001 - one bad request must not fail the others: run each alone
                log.info("a batch of %d requests failed; running them one by one", len(live))
                for piece in live:
                    self._run([piece])
                return
            self._record(sum(p.rows for p in live))
            start = 0
            for piece in live:
                try:
                    part = {k: v[start : start + piece.rows] for k, v in outputs.items()}
                except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                    self._finish(piece, error=detached_error(exc))
                else:
                    self._finish(piece, outputs=part)
                start += piece.rows
            return
        (piece,) = live
        try:
            outputs = piece.task.runner({k: piece.inputs(k) for k in piece.task.inputs})
            self._record(piece.rows)
        except BaseException as exc:  # noqa: BLE001 - the waiting request gets the error
            self._finish(piece, error=detached_error(exc))
        else:
            self._finish(piece, outputs=outputs)

    def _finish(
        self, piece: _Piece, outputs: dict[str, np.ndarray] | None = None, error: BaseException | None = None
    ) -> None:
        """One piece is over: the request answers once all of its pieces are in, or at its first error."""
        task = piece.task
        with self._cond:
            task.running -= 1
            if task.done.is_set():
                return
            if error is not None:
                task.error = error
                task.done.set()
                return
            assert outputs is not None
            task.parts[piece.start] = outputs
            if task.taken < task.size or task.running:
                return
            if len(task.parts) == 1:
                task.result = outputs
            else:
                order = sorted(task.parts)
                task.result = {k: np.concatenate([task.parts[i][k] for i in order]) for k in outputs}
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
