"""Prometheus metrics of the server, on a registry of its own (served at /monitoring/prometheus/metrics)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = "/monitoring/prometheus/metrics"
STOP_REASONS = ("deadline", "cancelled")  # why a request stops between slices


@dataclass(frozen=True)
class MonitoringConfig:
    """TF Serving's MonitoringConfig: prometheus_config { enable, path }."""

    enable: bool = False
    path: str = DEFAULT_PATH


def parse_monitoring_config(text: str) -> MonitoringConfig:
    """Parse the text proto (`prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }`)."""
    text = re.sub(r"#.*", "", text)
    block = re.search(r"prometheus_config\s*:?\s*\{([^}]*)\}", text)
    if not block:
        if text.strip():
            raise ValueError("monitoring config: expected a prometheus_config { ... } block")
        return MonitoringConfig()
    body = block.group(1)
    enable = re.search(r"enable\s*:\s*(true|false)", body)
    path = re.search(r"path\s*:\s*\"([^\"]*)\"", body)
    return MonitoringConfig(
        enable=bool(enable and enable.group(1) == "true"),
        path=(path.group(1) if path and path.group(1) else DEFAULT_PATH),
    )


def load_monitoring_config(path: str | Path) -> MonitoringConfig:
    return parse_monitoring_config(Path(path).read_text())


class Metrics:
    """Requests, latency, errors by model/version/code, batch sizes, work stopped by deadlines, loaded versions."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "leukoflow_serving_requests",
            "Requests by API, model, version and status code",
            ["api", "model", "version", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "leukoflow_serving_errors",
            "Failed requests by model, version and status code",
            ["model", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "leukoflow_serving_request_latency_seconds",
            "Request latency by API and model",
            ["api", "model"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "leukoflow_serving_batch_size",
            "Rows per model run: a batch, or a slice of an unbatched request",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.images = Counter("leukoflow_serving_images", "Images scored", ["model", "version"], registry=self.registry)
        self.slices_skipped = Counter(
            "leukoflow_serving_slices_skipped",
            "Slices of requests not run because the deadline passed or the caller cancelled, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.stopped_images = Histogram(
            "leukoflow_serving_stopped_request_images",
            "Images scored per request that then stopped between slices (deadline passed or caller cancelled): "
            "work whose answer was never sent; _sum / _count is the work per started request",
            ["reason"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        for reason in STOP_REASONS:  # both series exist from the start, at 0
            self.slices_skipped.labels(reason)
            self.stopped_images.labels(reason)
        self.log_dropped = Counter(
            "leukoflow_serving_request_log_dropped",
            "Request-log records dropped because the writer was behind",
            registry=self.registry,
        )
        self.loaded = Gauge(
            "leukoflow_serving_loaded_versions",
            "1 for each model version loaded and available",
            ["model", "version"],
            registry=self.registry,
        )

    def observe(self, api: str, model: str, version: int | None, code: str, seconds: float) -> None:
        v = "" if version is None else str(version)
        self.requests.labels(api, model, v, code).inc()
        self.latency.labels(api, model).observe(seconds)
        if code != "OK":
            self.errors.labels(model, v, code).inc()

    def set_loaded(self, model: str, versions: list[int], previous: list[int]) -> None:
        for v in previous:
            if v not in versions:
                try:
                    self.loaded.remove(model, str(v))
                except KeyError:
                    pass
        for v in versions:
            self.loaded.labels(model, str(v)).set(1)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
