"""Serving benchmark: `leukoflow serve` (request log on, its default) and the logging proxy, beside the in-process call.

    .venv/bin/python -m benchmarks.serving [--model-dir DIR] [--iterations 200] [--duration 5]

Measured in one run, on the same JPEG bytes (real images from data/ when present):
- single-image latency p50/p95/p99: in-process `serving_default`, gRPC Predict, REST :predict; the gRPC
  target compares gRPC and in-process calls made alternately, call by call (measured minutes apart, the
  same two figures moved by up to 2 ms between runs on this shared machine);
- throughput (images/s) at 1, 8 and 32 concurrent gRPC clients, server batching off and on, beside the
  in-process best-batch throughput;
- resident memory of the server process with two versions loaded (stable and canary);
- the request-logging proxy (monitoring/proxy.py) in front of a server without a log: its p50 overhead,
  its throughput at the most clients, and the records it logged or dropped.
The server measurements run with the request log on, as `leukoflow serve` does by default.
Loopback only, bounded loops (a fixed count or a fixed duration per measurement). Writes
benchmarks/results/serving.json and serving.md.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import REPO, start_server, stop_server

RESULTS = harness.results_dir(__file__)
MODEL = "leukemia"
TARGET_GRPC_OVERHEAD_MS = 3.0
TARGET_BATCHED_FRACTION = 0.8
TARGET_PROXY_OVERHEAD_MS = 1.0


# ---------------------------------------------------------------- inputs


def find_model(model_dir: str | None, workdir: Path) -> tuple[Path, str]:
    """The SavedModel to serve and where it came from: given, promoted, trained, or an untrained MobileNetV2."""
    from components import home

    if model_dir:
        return Path(model_dir), "given"
    store = home.model_base() / MODEL
    versions = sorted(
        (p for p in store.glob("*") if p.name.isdigit() and (p / "saved_model.pb").exists()), key=lambda p: int(p.name)
    )
    if versions:
        return versions[-1], f"promoted version {versions[-1].name}"
    trained = sorted(home.home().glob("**/saved_model/saved_model.pb"), key=lambda p: p.stat().st_mtime)
    if trained:
        return trained[-1].parent, "trained (latest under LEUKOFLOW_HOME)"
    # No trained model yet: the quick profile's MobileNetV2 with random weights has the served model's cost.
    from components import settings
    from components.train.export import export_saved_model
    from components.train.models import build_model

    config = settings.model_config("quick", "mobilenetv2", weights="none")
    path = workdir / "untrained-mobilenetv2"
    export_saved_model(
        build_model(config),
        path,
        model_name=config.name,
        image_size=config.image_size,
        brightness=config.brightness,
        warmup_images=load_jpegs(1),
    )
    return path, f"untrained mobilenetv2 at {config.image_size}px (latency only)"


def load_jpegs(count: int) -> list[bytes]:
    """Real JPEGs from data/ (spread over the classes), or synthetic 224x224 ones when the data is absent."""
    files = sorted((REPO / "data").glob("*/*.jpg"))
    if files:
        step = max(1, len(files) // count)
        return [p.read_bytes() for p in files[::step][:count]]
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def model_store(source: Path, root: Path) -> Path:
    """Two versions (1 stable, 2 canary) of the model in a TF Serving layout, and their models.config."""
    base = root / "models" / MODEL
    for version in (1, 2):
        shutil.copytree(source, base / str(version))
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n  config {\n"
        f'    name: "{MODEL}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n'
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        '    version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }\n'
        "  }\n}\n"
    )
    return config


# ---------------------------------------------------------------- measurement helpers


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


def timed(fn, iterations: int, warmup: int = 5) -> list[float]:
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(iterations):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples


def concurrent_throughput(make_call, clients: int, duration_s: float) -> dict[str, float]:
    """`clients` threads, each calling its own `make_call()` in a loop for `duration_s`; images/s overall."""
    calls = [make_call() for _ in range(clients)]
    counts = [0] * clients
    errors = [0] * clients
    window = {"start": 0.0, "stop": 0.0}

    def open_window() -> None:  # runs once, when every worker is connected and warm
        window["start"] = time.perf_counter()
        window["stop"] = window["start"] + duration_s

    start_gate = threading.Barrier(clients, action=open_window)
    failures: list[str] = []

    def worker(k: int) -> None:
        call = calls[k]
        try:
            call(0)  # connect and warm outside the timed window
            start_gate.wait(timeout=120)
        except Exception as exc:  # noqa: BLE001 - one client that cannot start stops the measurement, never hangs it
            failures.append(f"client {k}: {type(exc).__name__}: {exc}")
            start_gate.abort()
            return
        i = 0
        while time.perf_counter() < window["stop"]:
            try:
                call(i)
                counts[k] += 1
            except Exception:  # noqa: BLE001 - counted, reported, never silent
                errors[k] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 240)
    if failures or start_gate.broken:
        raise RuntimeError(f"{clients} concurrent clients could not start: {failures[:1] or 'barrier broken'}")
    begin = window["start"]
    elapsed = time.perf_counter() - begin
    return {"images_per_s": sum(counts) / elapsed, "requests": sum(counts), "errors": sum(errors), "seconds": elapsed}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


# ---------------------------------------------------------------- the three paths


def in_process_caller(model_dir: Path, jpegs: list[bytes]):
    """serving_default of the SavedModel in this process, one image a call."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    single = [tf.constant([j]) for j in jpegs]
    return lambda i: fn(images=single[i % len(single)])


def in_process(model_dir: Path, jpegs: list[bytes], iterations: int, duration_s: float) -> dict:
    """The SavedModel's serving_default called directly in this process (the reference)."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    single = [tf.constant([j]) for j in jpegs]
    latency = percentiles(timed(lambda i: fn(images=single[i % len(single)]), iterations))
    throughput = {}
    for batch in (1, 8, 32):
        batches = [
            tf.constant([jpegs[(s + k) % len(jpegs)] for k in range(batch)]) for s in range(0, len(jpegs), batch)
        ]
        fn(images=batches[0])
        n, begin = 0, time.perf_counter()
        while time.perf_counter() - begin < duration_s:
            fn(images=batches[n % len(batches)])
            n += 1
        throughput[str(batch)] = n * batch / (time.perf_counter() - begin)
    return {"latency": latency, "throughput_by_batch": throughput, "best_batch_throughput": max(throughput.values())}


BATCHING_CONFIG = harness.BATCHING_CONFIG


def host_batching_config(workdir: Path, threads: int | None = None) -> tuple[Path, str]:
    """serving/batching.config with num_batch_threads set to this host's CPU count.

    The checked-in value is sized for the Kubernetes CPU limit; TF Serving's guide sizes batch threads to
    the cores, and on a smaller host extra threads only split the queue into smaller batches.
    """
    import re

    threads = threads or os.cpu_count() or 1
    text = re.sub(
        r"num_batch_threads\s*\{\s*value:\s*\d+\s*\}",
        f"num_batch_threads {{ value: {threads} }}",
        BATCHING_CONFIG.read_text(),
    )
    path = workdir / "batching.config"
    path.write_text(text)
    return path, text


# The batched server's TensorFlow op threads: 1, so each batch thread keeps one core to itself.
# With TensorFlow's default (every core per op) concurrent batches preempt each other's op threads
# and throughput at 32 clients falls by a fifth on 2 cores (docs/operations.md, "Serving throughput");
# `--batched-intra-op 0` measures that default.
BATCHED_INTRA_OP = 1
# The store is written once before each server starts: no need to poll it for new versions.
NO_VERSION_POLLING = ("--file_system_poll_wait_seconds", "0")


def grpc_caller(port: int, jpegs: list[bytes], batch: int = 1):
    """A fresh client (its own channel, like a separate hospital system) and its call function."""
    from serving.client import ServingClient

    client = ServingClient(target=f"127.0.0.1:{port}", deadline_s=30.0, retries=0)

    def call(i: int) -> None:
        client.predict_raw([jpegs[(i + k) % len(jpegs)] for k in range(batch)], label="stable")

    return call


def rest_caller(port: int, jpegs: list[bytes]):
    """A keep-alive HTTP connection posting `{"instances": [{"b64": ...}]}`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}]}) for j in jpegs]

    def call(i: int) -> None:
        conn.request(
            "POST",
            f"/v1/models/{MODEL}/labels/stable:predict",
            body=bodies[i % len(bodies)],
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"REST {response.status}: {body[:200]!r}")

    return call


def prometheus_value(port: int, path: str, metric: str) -> float:
    """One unlabelled counter from a Prometheus text page (0 when absent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric + " ")]
    return sum(values)


def log_records(folder: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl*")) if folder.is_dir() else 0


def paired_latency(reference, call, iterations: int) -> dict:
    """Two callables timed alternately, call by call, so load drift on the shared machine hits both alike."""
    for i in range(5):  # warm-up
        reference(i), call(i)
    ref_s, call_s = [], []
    for i in range(iterations):
        for fn, samples in ((reference, ref_s), (call, call_s)):
            start = time.perf_counter()
            fn(i)
            samples.append(time.perf_counter() - start)
    return {"reference": percentiles(ref_s), "call": percentiles(call_s)}


def serve_and_measure(
    config: Path,
    jpegs: list[bytes],
    batching: bool,
    iterations: int,
    duration_s: float,
    clients: list[int],
    workdir: Path,
    batching_config: Path = BATCHING_CONFIG,
    batched_intra_op: int = BATCHED_INTRA_OP,
    request_log: Path | None = None,
    paired_with=None,
) -> dict:
    tag = f"batching-{batching}-log-{request_log is not None}"
    proc, grpc_port, rest_port = start_server(
        config,
        workdir / f"server-{tag}.log",
        request_log=request_log,
        batching=batching,
        batching_config=batching_config,
        intra_op_threads=batched_intra_op,
        extra_flags=NO_VERSION_POLLING,
    )
    try:
        result: dict = {"rss_mb_two_versions": rss_mb(proc.pid), "request_log": request_log is not None}
        if not batching:  # single-image latency is a property of the unbatched path (batching adds its timeout)
            result["grpc_latency"] = percentiles(timed(grpc_caller(grpc_port, jpegs), iterations))
            result["rest_latency"] = percentiles(timed(rest_caller(rest_port, jpegs), iterations))
            if paired_with is not None:  # the target's comparison: in-process and gRPC interleaved
                result["paired_with_in_process"] = paired_latency(
                    paired_with, grpc_caller(grpc_port, jpegs), iterations
                )
        result["throughput"] = {
            str(c): concurrent_throughput(lambda: grpc_caller(grpc_port, jpegs), c, duration_s) for c in clients
        }
        result["rss_mb_after_load_test"] = rss_mb(proc.pid)
        if request_log is not None:
            time.sleep(1.0)  # let the writer finish what is queued
            result["log_dropped"] = prometheus_value(
                rest_port, "/monitoring/prometheus/metrics", "leukoflow_serving_request_log_dropped_total"
            )
            result["log_records"] = log_records(request_log)
        return result
    finally:
        stop_server(proc)


def start_proxy(grpc_port: int, rest_port: int, request_log: Path, log_path: Path) -> tuple[subprocess.Popen, int, int]:
    """`leukoflow monitor proxy` in its own process in front of a server; metrics on a free port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "monitor",
        "proxy",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--rest-port",
        "0",
        "--metrics-port",
        str(metrics_port),
        "--upstream-grpc",
        f"127.0.0.1:{grpc_port}",
        "--upstream-rest",
        f"127.0.0.1:{rest_port}",
        "--request-log-dir",
        str(request_log),
        "--json",
    ]
    proc, info = harness.launch(cmd, log_path, 120.0, "the proxy")
    return proc, info["grpc_port"], metrics_port


def proxy_and_measure(
    config: Path,
    jpegs: list[bytes],
    iterations: int,
    duration_s: float,
    clients: list[int],
    workdir: Path,
    batching_config: Path,
    batched_intra_op: int = BATCHED_INTRA_OP,
) -> dict:
    """The production path: the proxy (logging) in front of a server that does not log, as TF Serving does not.

    Latency: the same unbatched server called directly and through the proxy, alternately call by call, so
    load drift on the shared machine hits both. Throughput: a batched server through the proxy.
    """
    out: dict = {}
    server, grpc_port, rest_port = start_server(
        config, workdir / "server-for-proxy.log", extra_flags=NO_VERSION_POLLING
    )
    proxy, proxy_port, metrics_port = start_proxy(grpc_port, rest_port, workdir / "proxy-log", workdir / "proxy.log")
    try:
        paired = paired_latency(grpc_caller(grpc_port, jpegs), grpc_caller(proxy_port, jpegs), iterations)
        out["direct_grpc_latency"], out["proxy_grpc_latency"] = paired["reference"], paired["call"]
    finally:
        stop_server(proxy)
        stop_server(server)
    server, grpc_port, rest_port = start_server(
        config,
        workdir / "server-batched-for-proxy.log",
        batching=True,
        batching_config=batching_config,
        intra_op_threads=batched_intra_op,
        extra_flags=NO_VERSION_POLLING,
    )
    proxy, proxy_port, metrics_port = start_proxy(
        grpc_port, rest_port, workdir / "proxy-log-batched", workdir / "proxy-batched.log"
    )
    try:
        top = max(clients)
        out["throughput"] = {str(top): concurrent_throughput(lambda: grpc_caller(proxy_port, jpegs), top, duration_s)}
        time.sleep(1.0)
        out["log_dropped"] = prometheus_value(metrics_port, "/metrics", "leukoflow_proxy_request_log_dropped_total")
        out["log_records"] = log_records(workdir / "proxy-log-batched")
    finally:
        stop_server(proxy)
        stop_server(server)
    return out


# ---------------------------------------------------------------- report


def markdown(results: dict) -> str:
    ref, plain, batched = results["in_process"], results["server"]["batching_off"], results["server"]["batching_on"]
    lat = lambda d: f"{d['p50_ms']:.1f} | {d['p95_ms']:.1f} | {d['p99_ms']:.1f}"  # noqa: E731
    lines = [
        f"Serving benchmark ({results['model_source']}; {results['images']} JPEGs; {results['host']['cpus']} CPUs, "
        f"{results['host']['machine']}, load average {results['host']['load_avg_1m'][0]:.1f} -> {results['host']['load_avg_1m'][1]:.1f}; "
        f"{results['when']})",
        "",
        "| single image | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|",
        f"| in-process SavedModel (better of before/after) | {lat(ref['latency'])} |",
        f"| gRPC Predict, request log on | {lat(plain['grpc_latency'])} |",
        f"| REST :predict (b64 JSON), request log on | {lat(plain['rest_latency'])} |",
        f"| gRPC Predict, server without log (proxy baseline) | {lat(results['proxy']['direct_grpc_latency'])} |",
        f"| gRPC Predict through the logging proxy | {lat(results['proxy']['proxy_grpc_latency'])} |",
        "",
        "| throughput, images/s | batching off | batching on | in-process, best batch size |",
        "|---|---|---|---|",
    ]
    for c in results["clients"]:
        lines.append(
            f"| {c} concurrent gRPC clients | {plain['throughput'][str(c)]['images_per_s']:.1f} | "
            f"{batched['throughput'][str(c)]['images_per_s']:.1f} | {ref['best_batch_throughput']:.1f} |"
        )
    top = str(max(results["clients"]))
    lines.append(
        f"| {top} gRPC clients through the logging proxy | | "
        f"{results['proxy']['throughput'][top]['images_per_s']:.1f} | {ref['best_batch_throughput']:.1f} |"
    )
    t = results["targets"]
    lines += [
        "",
        f"Server resident memory with two versions loaded: {plain['rss_mb_two_versions']:.0f} MB "
        f"(after load: {plain['rss_mb_after_load_test']:.0f} MB unbatched, {batched['rss_mb_after_load_test']:.0f} MB batched).",
        "",
        f"- gRPC p50 overhead over in-process, the two called alternately call by call "
        f"({plain['paired_with_in_process']['call']['p50_ms']:.1f} vs {plain['paired_with_in_process']['reference']['p50_ms']:.1f} ms): "
        f"{t['grpc_p50_overhead_ms']:.2f} ms (target <= {TARGET_GRPC_OVERHEAD_MS} ms): "
        f"{'met' if t['grpc_p50_met'] else 'NOT met'}; from the table's rows, measured minutes apart: "
        f"{plain['grpc_latency']['p50_ms'] - ref['latency']['p50_ms']:.2f} ms (the in-process reference is faster "
        f"alone: nothing else's threads on the cores)",
        f"- batched throughput at {max(results['clients'])} clients / in-process best batch: {t['batched_fraction']:.2f} "
        f"(target >= {TARGET_BATCHED_FRACTION}): {'met' if t['batched_met'] else 'NOT met'}",
        f"- the logging proxy's p50 overhead (through it vs the same server directly): {t['proxy_p50_overhead_ms']:.2f} ms "
        f"(target <= {TARGET_PROXY_OVERHEAD_MS} ms): {'met' if t['proxy_met'] else 'NOT met'}",
        f"- request-log records dropped (server and proxy, all load tests incl. {top} clients): {t['log_dropped']:.0f} "
        f"(target 0): {'met' if t['log_dropped_met'] else 'NOT met'}; records written: server unbatched "
        f"{plain['log_records']}, batched {batched['log_records']}, proxy {results['proxy']['log_records']}",
        f"- failed requests during the load tests: {t['errors']}",
        f"- server batching: {' '.join(results['batching_parameters'])} (serving/batching.config, batch threads = host CPUs); "
        f"batched server flags: {' '.join(results['batched_server_flags'])}; latency and unbatched rows use TensorFlow's default threads",
        "- client and server share this machine's CPUs; the in-process reference has them to itself",
    ]
    return "\n".join(lines) + "\n"


def _display(path: Path) -> str:
    """No machine paths in the committed results: relative to the repo or the state home."""
    from components import home

    return home.display(path)


def run(
    model_dir: str | None,
    iterations: int,
    duration_s: float,
    clients: list[int],
    images: int,
    out_dir: Path,
    batched_intra_op: int = BATCHED_INTRA_OP,
) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        jpegs = load_jpegs(images)
        source, origin = find_model(model_dir, workdir)
        config = model_store(source, workdir)
        batching_path, batching_text = host_batching_config(workdir)
        print(f"model: {source} ({origin}); {len(jpegs)} JPEGs", file=sys.stderr)
        # The reference is measured before and after the servers (the machine is shared, load drifts);
        # the targets compare against its better figures, which is the stricter comparison.
        before = in_process(workdir / "models" / MODEL / "1", jpegs, iterations, duration_s)
        print(f"in-process p50 {before['latency']['p50_ms']:.1f} ms", file=sys.stderr)
        # The request log on, as `leukoflow serve` runs by default and the drift monitor needs.
        server = {
            "batching_off": serve_and_measure(
                config,
                jpegs,
                False,
                iterations,
                duration_s,
                clients,
                workdir,
                request_log=workdir / "log-unbatched",
                paired_with=in_process_caller(workdir / "models" / MODEL / "1", jpegs),
            ),
            "batching_on": serve_and_measure(
                config,
                jpegs,
                True,
                iterations,
                duration_s,
                clients,
                workdir,
                batching_path,
                batched_intra_op,
                request_log=workdir / "log-batched",
            ),
        }
        proxy = proxy_and_measure(
            config, jpegs, iterations, duration_s, clients, workdir, batching_path, batched_intra_op
        )
        after = in_process(workdir / "models" / MODEL / "1", jpegs, iterations, duration_s)
        reference = min((before, after), key=lambda r: r["latency"]["p50_ms"])
        reference = {
            **reference,
            "best_batch_throughput": max(before["best_batch_throughput"], after["best_batch_throughput"]),
            "runs": {"before": before, "after": after},
        }
    top = str(max(clients))
    paired = server["batching_off"]["paired_with_in_process"]
    overhead = paired["call"]["p50_ms"] - paired["reference"]["p50_ms"]
    fraction = server["batching_on"]["throughput"][top]["images_per_s"] / reference["best_batch_throughput"]
    errors = sum(r["errors"] for mode in (*server.values(), proxy) for r in mode["throughput"].values())
    proxy_overhead = proxy["proxy_grpc_latency"]["p50_ms"] - proxy["direct_grpc_latency"]["p50_ms"]
    dropped = server["batching_on"]["log_dropped"] + server["batching_off"]["log_dropped"] + proxy["log_dropped"]
    results = {
        "model_source": origin,
        "model_dir": _display(source),
        "images": len(jpegs),
        "iterations": iterations,
        "duration_s": duration_s,
        "clients": clients,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        # other work on the machine skews every figure: the load before and after
        "host": {**harness.host_facts(), "load_avg_1m": [load_before, os.getloadavg()[0]]},
        "in_process": reference,
        "server": server,
        "proxy": proxy,
        "batching_parameters": [line for line in batching_text.splitlines() if line and not line.startswith("#")],
        "batched_server_flags": [f"--tensorflow_intra_op_parallelism={batched_intra_op}"],
        "targets": {
            "grpc_p50_overhead_ms": overhead,
            "grpc_p50_met": overhead <= TARGET_GRPC_OVERHEAD_MS,
            "batched_fraction": fraction,
            "batched_met": fraction >= TARGET_BATCHED_FRACTION,
            "errors": errors,
            "proxy_p50_overhead_ms": proxy_overhead,
            "proxy_met": proxy_overhead <= TARGET_PROXY_OVERHEAD_MS,
            "log_dropped": dropped,
            "log_dropped_met": dropped == 0,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("serving.json", json.dumps(results, indent=2)), ("serving.md", markdown(results))):
        tmp_path = out_dir / f".{name}.tmp"
        tmp_path.write_text(text)
        tmp_path.replace(out_dir / name)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serving latency and throughput vs the in-process SavedModel.")
    parser.add_argument(
        "--model-dir", help="SavedModel version directory (default: promoted, else trained, else untrained MobileNetV2)"
    )
    parser.add_argument("--iterations", type=int, default=200, help="single-image calls per latency measurement")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent gRPC clients")
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs cycled through")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for serving.json and serving.md")
    parser.add_argument(
        "--batched-intra-op",
        type=int,
        default=BATCHED_INTRA_OP,
        help="--tensorflow_intra_op_parallelism of the batched server (0: TensorFlow's default)",
    )
    args = parser.parse_args(argv)
    results = run(
        args.model_dir, args.iterations, args.duration, args.clients, args.images, args.out, args.batched_intra_op
    )
    print(markdown(results))


if __name__ == "__main__":
    main()
