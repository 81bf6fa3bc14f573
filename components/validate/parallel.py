"""A small process-pool map shared by the data steps (decoding thousands of JPEGs wants every core)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a pool's start-up costs more than it saves.
MIN_PARALLEL_ITEMS = 256


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and cgroups pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(func: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """`[func(x) for x in items]` in order, over a fork pool when it pays off.

    `func` must be a module-level function. Fork is used because it starts in
    milliseconds; the data steps never import TensorFlow before calling this.
    """
    items = list(items)
    workers = cpu_count() if workers is None else max(1, workers)
    if workers == 1 or len(items) < MIN_PARALLEL_ITEMS:
        return [func(x) for x in items]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return pool.map(func, items, chunksize=max(16, len(items) // (workers * 8)))
