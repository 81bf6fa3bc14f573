"""Abuse benchmark: the probes that found the serving defects, repeated against `leukoflow serve`.

    .venv/bin/python -m benchmarks.abuse [--model-dir DIR] [--slow-connections 1000]

On loopback only, every loop bounded by a count or a few seconds. Measured:
- a 60 MB REST body of 15,000,000 tiny instances: time to the refusal, the server's RSS growth after it
  (and at its peak), over three such requests;
- after 16 requests whose deadline passes, how long the next one-image request takes (batching off and on);
- predict p50 idle, and while 4 clients ask for Grad-CAM explanations without pause;
- REST answers (API and page) while 1,000 slow connections are held open;
- failed `stable` requests while a reload that moves `stable` to a version not yet loaded is refused.
The model: the newest promoted version in the state home's model store when present, else benchmarks.serving's
choice (promoted in LEUKOFLOW_HOME, trained, or the quick profile's MobileNetV2 with random weights).
Writes benchmarks/results/abuse.json and abuse.md and prints the table.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import start_server, stop_server
from benchmarks.serving import BATCHED_INTRA_OP, MODEL, NO_VERSION_POLLING, load_jpegs, rss_mb

RESULTS = harness.results_dir(__file__)

BIG_INSTANCES = 15_000_000
EXPIRED = 16
EXPLAIN_CLIENTS = 4


def untrained_model(workdir: Path) -> tuple[Path, str]:
    """The quick profile's MobileNetV2 with random weights, exported by the trainer's code with its Keras model
    (Grad-CAM needs it): the served model's cost, not its answers."""
    from components import settings
    from components.train.export import export_saved_model
    from components.train.models import build_model

    config = settings.model_config("quick", "mobilenetv2", weights="none")
    model = build_model(config)
    keras_path = workdir / "model.keras"
    model.save(keras_path)
    path = workdir / "untrained-mobilenetv2"
    export_saved_model(
        model,
        path,
        model_name=config.name,
        image_size=config.image_size,
        brightness=config.brightness,
        warmup_images=load_jpegs(1),
        keras_path=keras_path,
    )
    return (
        path,
        f"untrained (random weights) mobilenetv2 at {config.image_size}px, exported by components/train/export.py",
    )


def _store(source: Path, root: Path) -> Path:
    """Versions 1, 2 (loaded; stable, canary) and 3 (on disk, not in the config) and their models.config."""
    base = root / "models" / MODEL
    for version in (1, 2, 3):
        shutil.copytree(source, base / str(version))
    config = root / "models.config"
    config.write_text(_config(base, [1, 2], {"stable": 1, "canary": 2}))
    return config


def _config(base: Path, versions: list[int], labels: dict[str, int]) -> str:
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{MODEL}"\n    base_path: "{base}"\n'
        '    model_platform: "tensorflow"\n    model_version_policy { specific { '
        + " ".join(f"versions: {v}" for v in versions)
        + " } }\n"
        + "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
        + "  }\n}\n"
    )


def _post(port: int, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _get(port: int, path: str, timeout: float = 30.0) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class _PeakRss:
    """Samples a process's RSS every 10 ms while active."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def big_body(proc, rest: int) -> dict:
    body = b'{"instances": [' + b",".join([b'"a"'] * BIG_INSTANCES) + b"]}"
    for _ in range(2):  # the REST path's first-use allocations (handler threads, imports) are not the body's
        _post(rest, f"/v1/models/{MODEL}:predict", b'{"instances": ["a"]}')
    before = rss_mb(proc.pid)
    runs = []
    for _ in range(3):
        with _PeakRss(proc.pid) as peak:
            start = time.perf_counter()
            status, answer = _post(rest, f"/v1/models/{MODEL}:predict", body)
            seconds = time.perf_counter() - start
        time.sleep(0.5)
        runs.append(
            {
                "status": status,
                "seconds": round(seconds, 3),
                "peak_growth_mb": round(peak.peak - before, 1),
                "growth_after_mb": round(rss_mb(proc.pid) - before, 1),
                "error": json.loads(answer).get("error", "")[:120],
            }
        )
    after = rss_mb(proc.pid)
    return {
        "body_mb": round(len(body) / 1e6, 1),
        "runs": runs,
        "refused_s_max": max(r["seconds"] for r in runs),
        "rss_growth_mb": round(after - before, 1),
        "peak_growth_mb": max(r["peak_growth_mb"] for r in runs),
    }


def expired_then_next(grpc_port: int, jpegs: list[bytes]) -> dict:
    """16 eight-image requests with a 100 ms deadline, then one one-image request: its latency."""
    from serving.client import ServingClient

    codes: list[str] = []

    def expiring() -> None:
        client = ServingClient(target=f"127.0.0.1:{grpc_port}", deadline_s=0.1, retries=0)
        try:
            client.predict_raw([jpegs[k % len(jpegs)] for k in range(8)], label="stable")
            codes.append("OK")
        except Exception as exc:  # noqa: BLE001 - the code is what we count
            codes.append(str(getattr(exc, "code", type(exc).__name__)))

    threads = [threading.Thread(target=expiring) for _ in range(EXPIRED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = ServingClient(target=f"127.0.0.1:{grpc_port}", deadline_s=60.0, retries=0)
    start = time.perf_counter()
    client.predict_raw([jpegs[0]], label="stable")
    next_s = time.perf_counter() - start
    return {"expired_codes": {c: codes.count(c) for c in set(codes)}, "next_request_s": round(next_s, 3)}


def predict_p50(grpc_port: int, jpegs: list[bytes], n: int = 60) -> float:
    from serving.client import ServingClient

    client = ServingClient(target=f"127.0.0.1:{grpc_port}", deadline_s=30.0, retries=0)
    for i in range(3):
        client.predict_raw([jpegs[i % len(jpegs)]], label="stable")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        client.predict_raw([jpegs[i % len(jpegs)]], label="stable")
        samples.append(time.perf_counter() - start)
    return float(np.percentile(np.asarray(samples) * 1000, 50))


def explain_pressure(grpc_port: int, rest: int, jpegs: list[bytes]) -> dict:
    idle = predict_p50(grpc_port, jpegs)
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpegs[0]).decode()}]}).encode()
    stop, codes = threading.Event(), []

    def explainer() -> None:
        while not stop.is_set():
            status, _ = _post(rest, f"/v1/models/{MODEL}/labels/stable:explain", body)
            codes.append(status)
            if status == 429:
                time.sleep(0.05)  # a polite client backs off when told the explainer is busy

    threads = [threading.Thread(target=explainer) for _ in range(EXPLAIN_CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    try:
        loaded = predict_p50(grpc_port, jpegs)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {
        "predict_p50_idle_ms": round(idle, 2),
        "predict_p50_under_explain_ms": round(loaded, 2),
        "ratio": round(loaded / idle, 2),
        "explain_answers": {str(c): codes.count(c) for c in sorted(set(codes))},
    }


def slow_connections(rest: int, n: int) -> dict:
    """n connections that sent part of a request line; meanwhile 20 API requests and the page."""
    held, refused = [], 0
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", rest))
            s.sendall(b"GET /v1/models/leukemia HTTP/1.1\r\nHo")
            held.append(s)
        except OSError:
            refused += 1
            s.close()
    try:
        latencies, statuses = [], []
        for i in range(20):
            for s in held[i::20][:5]:  # keep trickling: one byte on some of them
                try:
                    s.send(b"s")
                except OSError:
                    pass
            start = time.perf_counter()
            try:
                statuses.append(_get(rest, f"/v1/models/{MODEL}", timeout=10))
            except OSError as exc:
                statuses.append(type(exc).__name__)
            latencies.append(time.perf_counter() - start)
        try:
            page = _get(rest, "/", timeout=10)
        except OSError as exc:
            page = type(exc).__name__
    finally:
        for s in held:
            s.close()
    ok = sum(1 for s in statuses if s == 200)
    return {
        "slow_connections": len(held),
        "connect_refused": refused,
        "api_ok": f"{ok}/{len(statuses)}",
        "api_p50_ms": round(float(np.percentile(np.asarray(latencies) * 1000, 50)), 2),
        "api_max_ms": round(max(latencies) * 1000, 2),
        "page_status": page,
    }


def refused_reload(grpc_port: int, base: Path, jpegs: list[bytes], seconds: float = 4.0) -> dict:
    """`stable` traffic from 3 clients while a one-step reload moving `stable` to unloaded version 3 is refused."""
    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from serving.client import ServingClient

    stop, counts, failures = threading.Event(), [0], []

    def client() -> None:
        c = ServingClient(target=f"127.0.0.1:{grpc_port}", deadline_s=30.0, retries=0)
        while not stop.is_set():
            try:
                c.predict_raw([jpegs[0]], label="stable")
                counts[0] += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(str(exc)[:100])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(_config(base, [3], {"stable": 3}), request.config)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=120)
            reload = "OK"
        except grpc.RpcError as exc:
            reload = f"{exc.code().name}: {exc.details()[:100]}"
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {
        "reload": reload,
        "stable_requests": counts[0] + len(failures),
        "failed": len(failures),
        "first_failure": failures[0] if failures else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="SavedModel to serve (default: see the module docstring)")
    parser.add_argument("--slow-connections", type=int, default=1000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="abuse-"))
    try:
        model_dir = args.model_dir
        source = "given"
        if not model_dir:
            from components import home

            store = home.model_base() / MODEL
            promoted = (
                sorted(
                    (p for p in store.glob("*") if p.name.isdigit() and (p / "saved_model.pb").is_file()),
                    key=lambda p: int(p.name),
                )
                if store.is_dir()
                else []
            )
            if promoted:
                model_dir, source = str(promoted[-1]), f"promoted version {promoted[-1].name} ({home.display(store)})"
        if model_dir:
            model = Path(model_dir)
        else:
            model, source = untrained_model(workdir)
        jpegs = load_jpegs(8)
        config = _store(model, workdir)
        results: dict = {"model": source, "host": harness.host_facts()}
        proc, grpc_port, rest = start_server(config, workdir / "server.log", extra_flags=NO_VERSION_POLLING)
        try:
            results["big_body"] = big_body(proc, rest)
            results["deadline_unbatched"] = expired_then_next(grpc_port, jpegs)
            results["explain"] = explain_pressure(grpc_port, rest, jpegs)
            results["slow_connections"] = slow_connections(rest, args.slow_connections)
            results["refused_reload"] = refused_reload(grpc_port, workdir / "models" / MODEL, jpegs)
        finally:
            stop_server(proc)
        proc, grpc_port, rest = start_server(
            config,
            workdir / "server-batched.log",
            batching=True,
            intra_op_threads=BATCHED_INTRA_OP,
            extra_flags=NO_VERSION_POLLING,
        )
        try:
            results["deadline_batched"] = expired_then_next(grpc_port, jpegs)
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(results)


def _table(r: dict) -> list[tuple[str, str, str, bool]]:
    b, e, s, rr = r["big_body"], r["explain"], r["slow_connections"], r["refused_reload"]
    return [
        (
            f"{b['body_mb']} MB REST body ({BIG_INSTANCES:,} instances) refused",
            f"{b['refused_s_max']:.3f} s max of 3",
            "< 1 s",
            b["refused_s_max"] < 1.0,
        ),
        (
            "server RSS growth after 3 such bodies (peak during)",
            f"{b['rss_growth_mb']:.0f} MB ({b['peak_growth_mb']:.0f} MB)",
            "< 100 MB",
            b["rss_growth_mb"] < 100,
        ),
        (
            f"next request after {EXPIRED} expired (no batching)",
            f"{r['deadline_unbatched']['next_request_s']:.3f} s",
            "< 1 s",
            r["deadline_unbatched"]["next_request_s"] < 1.0,
        ),
        (
            f"next request after {EXPIRED} expired (batching)",
            f"{r['deadline_batched']['next_request_s']:.3f} s",
            "< 1 s",
            r["deadline_batched"]["next_request_s"] < 1.0,
        ),
        (
            f"predict p50 idle -> under {EXPLAIN_CLIENTS} explain clients",
            f"{e['predict_p50_idle_ms']:.1f} -> {e['predict_p50_under_explain_ms']:.1f} ms (x{e['ratio']})",
            "<= x2",
            e["ratio"] <= 2.0,
        ),
        (
            f"REST while {s['slow_connections']} slow connections are held",
            f"{s['api_ok']} OK, p50 {s['api_p50_ms']:.1f} ms, max {s['api_max_ms']:.0f} ms; page {s['page_status']}",
            "answers",
            s["api_ok"].split("/")[0] == s["api_ok"].split("/")[1] and s["page_status"] == 200,
        ),
        (
            "failed `stable` requests through a refused reload",
            f"{rr['failed']} of {rr['stable_requests']}",
            "0",
            rr["failed"] == 0 and rr["reload"] != "OK",
        ),
    ]


def write(results: dict) -> None:
    from components.atomic_files import write_text

    rows = _table(results)
    results["targets_met"] = all(ok for *_, ok in rows)
    lines = [
        "# Serving under abuse (benchmarks/abuse.py)",
        "",
        f"Model: {results['model']}. Host: {results['host']['cpus']} CPUs. Loopback only.",
        "",
        "| probe | measured | target | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {probe} | {measured} | {target} | {'yes' if ok else 'NO'} |" for probe, measured, target, ok in rows]
    lines += [
        "",
        f"Expired requests' codes: unbatched {results['deadline_unbatched']['expired_codes']}, "
        f"batched {results['deadline_batched']['expired_codes']}. "
        f"Explain answers under pressure: {results['explain']['explain_answers']}. "
        f"Refused reload: {results['refused_reload']['reload']}.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "abuse.json", json.dumps(results, indent=2) + "\n")
    write_text(RESULTS / "abuse.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
