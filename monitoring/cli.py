"""`leukoflow monitor`: drift check, reference profile, trigger state."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

import typer

from components.cli_output import emit, fail

app = typer.Typer(
    add_completion=False, help="Drift monitoring: reference profiles, drift checks, the retraining trigger."
)
log = logging.getLogger("leukoflow.monitor")

EXIT_DRIFT = 3  # distinct from 1 (an error) and 2 (bad usage), so a scheduler can tell drift apart
KEEP_REPORTS = 168  # an hourly check keeps a week of report folders (each a few MB of self-contained HTML)


def _report_dir(root: Path) -> Path:
    """A new folder named by the UTC time (a suffix when two checks share a second)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    candidate, index = root / stamp, 1
    while candidate.exists():
        index += 1
        candidate = root / f"{stamp}-{index}"
    return candidate


def prune_reports(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` report folders under root; returns what was removed."""
    import shutil

    if keep <= 0 or not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if p.is_dir() and (p / "report.json").exists()), key=lambda p: p.name)
    removed = folders[:-keep]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _human(result: dict) -> str:
    reasons = f", because of {', '.join(result['reasons'])}" if result.get("reasons") else ""
    lines = [f"status: {result['status']} ({result['images']} images{reasons})"]
    if result.get("ood_rate") is not None:
        reference = result.get("reference_ood_rate")
        lines.append(
            f"out-of-distribution rate: {result['ood_rate']:.1%} (the model's reference: "
            + (f"{reference:.1%})" if reference is not None else "unknown, no verdict)")
        )
    if result.get("drifted_features"):
        lines.append("drifted features: " + ", ".join(result["drifted_features"]))
    lines.append(f"case mix changed: {result.get('case_mix_changed')}")
    if result.get("moved"):
        lines.append("moved: " + "; ".join(result["moved"]))
    lines.append(f"report: {result['report_html']}")
    if result.get("trigger"):
        lines.append(
            f"retraining: {'started' if result['trigger'].get('triggered') else 'not started'} "
            f"({result['trigger'].get('reason')})"
        )
    return "\n".join(lines)


def _parse_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--pipeline-arg {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


@app.command()
def drift(
    ctx: typer.Context,
    since: Optional[str] = typer.Option(
        None, "--since", help="Window from the request log: the last 90s/30m/24h/7d (default 24h)."
    ),
    images: Optional[Path] = typer.Option(
        None, "--images", help="Window from an image folder instead (class sub-folders give labels)."
    ),
    reference: Optional[Path] = typer.Option(
        None,
        "--reference",
        help="Reference features file; default: the served version's assets.extra/reference_features.parquet.",
    ),
    model_dir: Optional[Path] = typer.Option(
        None, "--model-dir", help="Where model versions live (default $LEUKOFLOW_HOME/models/leukemia)."
    ),
    version: Optional[str] = typer.Option(
        None,
        "--version",
        help="Model version: only its requests, and its reference (default: the version most requests in the window came from).",
    ),
    log_dir: Optional[Path] = typer.Option(
        None, "--log-dir", help="Request log directory (default $LEUKOFLOW_HOME/requests)."
    ),
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", help="Report folder (default $LEUKOFLOW_HOME/reports/drift/<UTC time>)."
    ),
    workspace: Optional[Path] = typer.Option(
        None, "--workspace", help="Evidently workspace (default $LEUKOFLOW_HOME/evidently)."
    ),
    no_workspace: bool = typer.Option(False, "--no-workspace", help="Do not add the run to the Evidently workspace."),
    webhook: Optional[str] = typer.Option(
        None, "--webhook", help="POST the summary here on drift (default $LEUKOFLOW_ALERT_WEBHOOK)."
    ),
    trigger: bool = typer.Option(
        False, "--trigger", help="On drift, start a retraining run (once per episode, with a cooldown)."
    ),
    kfp_host: Optional[str] = typer.Option(
        None, "--kfp-host", envvar="KFP_HOST", help="KFP API endpoint; without it the retraining runs locally."
    ),
    pipeline_package: Optional[Path] = typer.Option(
        None, "--pipeline-package", help="Compiled pipeline for KFP (default $LEUKOFLOW_HOME/pipeline.yaml)."
    ),
    experiment: str = typer.Option(
        "leukoflow-retraining", "--experiment", help="KFP experiment of the retraining runs."
    ),
    pipeline_arg: list[str] = typer.Option(
        [], "--pipeline-arg", help="Extra pipeline parameter KEY=VALUE (repeatable)."
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local retraining: the dataset (default data/)."),
    profile: str = typer.Option("quick", "--profile", help="Local retraining: training profile."),
    cooldown: str = typer.Option("24h", "--cooldown", help="Least time between two retraining runs."),
    cases_dir: Optional[Path] = typer.Option(
        None,
        "--cases-dir",
        help="Start a run only for cases committed since the last run (`leukoflow cases commit`); "
        "otherwise the alert names the referred images waiting for review.",
    ),
    kept_dir: Optional[Path] = typer.Option(
        None, "--kept-dir", help="The server's --keep_referred_images folder (default $LEUKOFLOW_HOME/referred)."
    ),
    keep: int = typer.Option(
        KEEP_REPORTS, "--keep", help="Report folders kept under the default report root (0 keeps all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compare a window of served (or folder) images with the training reference; exit 3 on drift."""
    from components import home, settings
    from monitoring import drift as drift_mod

    if since and images:
        fail("use either --since (request log) or --images (a folder), not both", as_json)
    try:
        model_root = model_dir or home.model_base() / settings.SERVED_MODEL_NAME
        if images is not None:
            current = drift_mod.window_from_images(images)
            source = f"images:{images}"
        else:
            window = drift_mod.parse_duration(since or "24h")
            directory = log_dir or home.request_log_dir()
            current = drift_mod.window_from_log(directory, window, version)
            source = f"request-log:{directory} since {since or '24h'}"
            if version is None and not current.empty and current["version"].notna().any():
                version = str(current["version"].astype(str).mode().iloc[0])  # the version most requests saw
        ref_path = drift_mod.resolve_reference(reference, model_root, version if reference is None else None)
        ref_frame = drift_mod.reference_frame(ref_path)
        out = output_dir or _report_dir(home.reports_dir() / "drift")
        ws = None if no_workspace else (workspace or home.home() / "evidently")
        summary = drift_mod.run_drift_check(
            ref_frame,
            current,
            out,
            ws,
            source=source,
            reference_path=str(ref_path),
            reference_ood_rate=drift_mod.reference_ood_rate(model_root, version),
        )
        pipeline_args = _parse_args(pipeline_arg)
        cooldown_td = drift_mod.parse_duration(cooldown)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
        return

    result = drift_mod.public_result(summary)
    if images is None:  # torn or unreadable request-log lines the window skipped (issue 17: counted, never fatal)
        result["skipped_log_lines"] = int(current.attrs.get("skipped_lines", 0))
    if output_dir is None:
        prune_reports(home.reports_dir() / "drift", keep)
    from monitoring import alerts

    if cases_dir is not None and result["status"] == "drift":  # the alert says what would let a rerun learn
        from components.cases.retraining import current, decide_rerun
        from monitoring.trigger import load_state, state_path

        committed, waiting = current(cases_dir, kept_dir)
        last = (load_state(state_path()).get("last_trigger") or {}).get("cases_hash")
        decision = decide_rerun(committed, last, waiting)
        result["review"] = decision.reason if not decision.start else f"retraining can learn from {decision.reason}"

    try:
        result["alert"] = alerts.alert(result, webhook)
    except ValueError as exc:  # a malformed webhook URL
        fail(str(exc), as_json)
    if trigger and summary["status"] != "insufficient_data":
        from monitoring import trigger as trigger_mod

        config = trigger_mod.TriggerConfig(
            host=kfp_host,
            package=str(pipeline_package) if pipeline_package else None,
            experiment=experiment,
            arguments=pipeline_args,
            data_dir=str(data_dir) if data_dir else None,
            profile=profile,
            cooldown=cooldown_td,
            local_runner=(ctx.obj or {}).get("local_runner"),  # the `leukoflow` root CLI gives the pipeline runner
            cases_dir=str(cases_dir) if cases_dir else None,
            kept_dir=str(kept_dir) if kept_dir else None,
        )
        result["trigger"] = trigger_mod.maybe_trigger(result, config)
    if settings.ROLLOUT_AUTO_STABLE:  # a triggered run's canary moves to stable once the rollout policy holds
        from components.promote import rollout

        try:
            result["rollout"] = rollout.maybe_auto_promote()
        except Exception as exc:  # noqa: BLE001 - the drift check's answer stands whatever the rollout does
            result["rollout"] = {"promoted": False, "why": f"{type(exc).__name__}: {exc}"}
    emit(result, as_json, _human)
    if result["status"] == "drift":
        raise typer.Exit(EXIT_DRIFT)


@app.command("reference")
def reference_cmd(
    split_dir: Path = typer.Option(..., "--split-dir", help="The split step's output (holds train/*.tfrecord)."),
    output: Path = typer.Option(..., "--output", help="Reference file to write (.parquet or .csv)."),
    saved_model: Optional[Path] = typer.Option(
        None, "--saved-model", help="Take the features from this exported model's serving_default outputs."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compute the reference profile: the served graph's image features of the training split."""
    from components.reference.executor import build_reference

    try:
        result = build_reference(split_dir, output, saved_model)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
        return
    emit(result, as_json, lambda r: f"reference: {r['images']} images {r['per_class']} -> {r['reference']}")


@app.command("trigger-state")
def trigger_state(
    reset: bool = typer.Option(False, "--reset", help="Forget the episode and cooldown (the run history is kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show (or reset) the retraining trigger's record: episode, last run, cooldown."""
    from monitoring import trigger as trigger_mod

    path = trigger_mod.state_path()
    try:
        with trigger_mod.locked(path):
            state = trigger_mod.load_state(path)
            if reset:
                state.update(episode=None, last_trigger=None)
                trigger_mod.save_state(path, state)
    except ValueError as exc:
        fail(str(exc), as_json)
        return
    emit({"state_file": str(path), **state}, as_json)


@app.command("proxy")
def proxy_cmd(
    upstream_grpc: str = typer.Option(
        "127.0.0.1:9000", "--upstream-grpc", help="TF Serving's gRPC address behind the proxy."
    ),
    upstream_rest: str = typer.Option(
        "127.0.0.1:9001", "--upstream-rest", help="TF Serving's REST address ('none': no REST)."
    ),
    host: str = typer.Option("0.0.0.0", "--host", help="Address the proxy listens on."),
    grpc_port: int = typer.Option(8500, "--grpc-port", help="gRPC port clients call."),
    rest_port: int = typer.Option(8501, "--rest-port", help="REST port clients call."),
    metrics_port: int = typer.Option(8502, "--metrics-port", help="Prometheus metrics of the proxy (-1: off)."),
    request_log_dir: Optional[Path] = typer.Option(
        None, "--request-log-dir", help="Request log folder (default: LEUKOFLOW_HOME/requests)."
    ),
    log_file: str = typer.Option(
        "requests.jsonl", "--log-file", help="This writer's file name (one per pod on a shared volume)."
    ),
    log_outputs: str = typer.Option(
        ",".join(("ood_score", "in_distribution", "refer")),
        "--log-outputs",
        help="Further signature outputs to copy into each record, comma-separated, when present.",
    ),
    log_images: bool = typer.Option(False, "--log-images", help="Also store each image (base64); off by default."),
    max_pending: int = typer.Option(
        4096, "--max-pending", help="Responses waiting for the writer before records are dropped."
    ),
    shadow: bool = typer.Option(
        True,
        "--shadow/--no-shadow",
        help="While a canary label is served, re-send each successful live gRPC Predict/Classify to it "
        "(off the request path) and record both answers for `leukoflow rollout status`.",
    ),
    shadow_sample_rate: float = typer.Option(
        None, "--shadow-sample-rate", help="Share of live calls re-sent to the canary (default: settings)."
    ),
    shadow_max_pending: int = typer.Option(
        None, "--shadow-max-pending", help="Shadow calls waiting before new ones are dropped and counted."
    ),
    shadow_dir: Optional[Path] = typer.Option(
        None, "--shadow-dir", help="Shadow records folder (default: <request log folder>/shadow)."
    ),
    canary_percent: Optional[float] = typer.Option(
        None,
        "--canary-percent",
        help="Route live calls that name no version or label: this percent to canary (while one is served), the "
        "rest to stable. Without it calls are relayed unchanged, and TF Serving answers those with the newest "
        "loaded version. Routing costs a gRPC server hop (docs/monitoring.md).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the bound ports once listening."),
) -> None:
    """Pass-through request-logging proxy in front of tensorflow/serving (same pod; docs/monitoring.md)."""
    import signal
    import sys
    import threading

    from components import home, settings
    from components.promote import rollout
    from monitoring.proxy import LoggingProxy, ProxyMetrics
    from monitoring.request_log import RequestLogWriter

    metrics = ProxyMetrics()
    try:
        sender = chooser = None
        if shadow:
            from monitoring.shadow import ShadowSender

            log_dir = request_log_dir or home.request_log_dir()
            sender = ShadowSender(
                upstream_grpc,
                shadow_dir or rollout.shadow_dir(log_dir),
                file_name=log_file.replace("requests", "shadow", 1) if "requests" in log_file else f"shadow-{log_file}",
                sample_rate=settings.SHADOW_SAMPLE_RATE if shadow_sample_rate is None else shadow_sample_rate,
                max_pending=settings.SHADOW_MAX_PENDING if shadow_max_pending is None else shadow_max_pending,
                metrics=metrics,
                upstream_rest=None if upstream_rest.lower() == "none" else upstream_rest,
            )
        if canary_percent is not None:
            from monitoring.label_router import LabelChooser

            chooser = LabelChooser(upstream_grpc, canary_percent)
        writer = RequestLogWriter(
            request_log_dir or home.request_log_dir(),
            store_images=log_images,
            file_name=log_file,
            max_pending=max_pending,
            on_drop=metrics.log_dropped.inc,
            logged_outputs=tuple(o.strip() for o in log_outputs.split(",") if o.strip()),
        )
        proxy = LoggingProxy(
            upstream_grpc,
            None if upstream_rest.lower() == "none" else upstream_rest,
            writer,
            host=host,
            grpc_port=grpc_port,
            rest_port=rest_port,
            metrics=metrics,
            shadow=sender,
            chooser=chooser,
        ).start()
    except (OSError, ValueError) as exc:
        fail(f"cannot start the proxy: {exc}", as_json)
        return
    if metrics_port >= 0:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=host, registry=metrics.registry)
    emit(
        {
            "status": "proxying",
            "grpc_port": proxy.grpc_port,
            "rest_port": proxy.rest_port,
            "upstream_grpc": upstream_grpc,
            "upstream_rest": upstream_rest,
            "request_log": str(writer.directory),
            "shadow": str(sender.path) if sender else None,
            "canary_percent": canary_percent,
        },
        as_json,
        lambda r: (
            f"proxy on gRPC {r['grpc_port']} and REST {r['rest_port']} -> {upstream_grpc}, "
            f"{upstream_rest}; request log {r['request_log']}"
        ),
    )
    sys.stdout.flush()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    proxy.stop()
