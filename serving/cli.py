"""`leukoflow serve`: the TF-Serving-compatible server, with tensorflow_model_server's flag names."""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from components.cli_output import emit, fail

log = logging.getLogger(__name__)


def serve(
    port: int = typer.Option(8500, "--port", help="gRPC port."),
    rest_api_port: int = typer.Option(8501, "--rest_api_port", help="REST (and page) port; -1 disables REST."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 to listen on every interface."),
    model_name: str = typer.Option("default", "--model_name", help="Model name when serving one --model_base_path."),
    model_base_path: Optional[str] = typer.Option(
        None, "--model_base_path", help="Directory of integer version subdirectories."
    ),
    model_config_file: Optional[str] = typer.Option(
        None, "--model_config_file", help="ModelServerConfig text proto (models.config)."
    ),
    model_config_file_poll_wait_seconds: float = typer.Option(
        0, "--model_config_file_poll_wait_seconds", help="Re-read the config file this often (0: never)."
    ),
    file_system_poll_wait_seconds: float = typer.Option(
        1, "--file_system_poll_wait_seconds", help="Look for new versions in base paths this often (0: never)."
    ),
    enable_batching: bool = typer.Option(False, "--enable_batching", help="Batch concurrent requests on the server."),
    batching_parameters_file: Optional[str] = typer.Option(
        None,
        "--batching_parameters_file",
        help="BatchingParameters text proto (max_batch_size, batch_timeout_micros, ...).",
    ),
    monitoring_config_file: Optional[str] = typer.Option(
        None, "--monitoring_config_file", help="MonitoringConfig text proto enabling /monitoring/prometheus/metrics."
    ),
    ssl_config_file: Optional[str] = typer.Option(
        None, "--ssl_config_file", help="SSLConfig text proto (server_key, server_cert, custom_ca, client_verify)."
    ),
    rest_api_num_threads: Optional[int] = typer.Option(
        None,
        "--rest_api_num_threads",
        help="REST requests processed at once (default: 16; with batching, enough to fill every batch).",
    ),
    grpc_max_threads: Optional[int] = typer.Option(
        None,
        "--grpc_max_threads",
        help="gRPC worker threads (default: 16; with batching, max_batch_size x (num_batch_threads + 1)).",
    ),
    tensorflow_intra_op_parallelism: int = typer.Option(
        0, "--tensorflow_intra_op_parallelism", help="Threads one TensorFlow op may use (0: TensorFlow's choice)."
    ),
    tensorflow_inter_op_parallelism: int = typer.Option(
        0, "--tensorflow_inter_op_parallelism", help="TensorFlow ops run at once (0: TensorFlow's choice)."
    ),
    max_concurrent_runs: Optional[int] = typer.Option(
        None,
        "--max_concurrent_runs",
        help="Unbatched model runs at once (default: one per core, at least 2); "
        "a request whose deadline passes while it waits is not run.",
    ),
    slice_size: Optional[int] = typer.Option(
        None,
        "--slice_size",
        help="Images per model run of a large request; its deadline and its caller are checked before each "
        "(default: the batch size that runs with --enable_batching, else 8).",
    ),
    allow_version_labels_for_unavailable_models: bool = typer.Option(
        False,
        "--allow_version_labels_for_unavailable_models",
        help="Let a label name a version that is not loaded yet.",
    ),
    request_log_dir: Optional[str] = typer.Option(
        None,
        "--request_log_dir",
        help="Request log directory for the drift monitor (default: LEUKOFLOW_HOME/requests); 'none' disables.",
    ),
    request_log_images: bool = typer.Option(
        False, "--request_log_images", help="Also store each image (base64) in the request log; off by default."
    ),
    keep_referred_images: Optional[str] = typer.Option(
        None,
        "--keep_referred_images",
        help="Keep each image the model refers in this folder (sha256-named) for a pathologist to label; "
        "off by default. These are patient images: see docs/operations.md.",
    ),
    keep_referred_max_mb: float = typer.Option(
        1024, "--keep_referred_max_mb", help="Size limit of the kept images; the oldest go first."
    ),
    keep_referred_max_days: float = typer.Option(
        30, "--keep_referred_max_days", help="Age limit of a kept image; older ones are removed."
    ),
    cases_dir: Optional[str] = typer.Option(
        None,
        "--cases_dir",
        help="Accept a pathologist's label for an image at POST /v1/cases (and on the page) into this cases "
        "folder, validated like `leukoflow cases add`; off by default.",
    ),
    cases_base_data: Optional[str] = typer.Option(
        None,
        "--cases_base_data",
        help="With --cases_dir: the base data cases are deduplicated against (default: data/).",
    ),
    cases_base_manifest: Optional[str] = typer.Option(
        None,
        "--cases_base_manifest",
        help="With --cases_dir: a validate manifest.csv or dedup kept.csv of the base data, instead of hashing it.",
    ),
    max_image_pixels: int = typer.Option(
        50_000_000, "--max_image_pixels", help="Refuse images with more decoded pixels."
    ),
    max_request_pixels: int = typer.Option(
        200_000_000, "--max_request_pixels", help="Refuse requests whose images add up to more pixels."
    ),
    max_batch_size: int = typer.Option(256, "--max_batch_size", help="Refuse requests with more images than this."),
    max_message_bytes: int = typer.Option(
        64 * 1024 * 1024, "--max_message_bytes", help="Refuse larger request bodies/messages."
    ),
    max_concurrent_explains: int = typer.Option(
        1, "--max_concurrent_explains", help="Grad-CAM explanations computed at once; more get HTTP 429."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the bound ports once serving."),
    open_request_log: Optional[Callable] = None,  # injected by make_serve_app, never a flag
) -> None:
    """Serve SavedModels over gRPC (TF Serving's PredictionService/ModelService) and REST (/v1/models/...)."""
    from components import home
    from serving.limits import Limits
    from serving.server import Server, ServerOptions

    if request_log_dir is None:
        request_log_dir = str(home.request_log_dir())
    options = ServerOptions(
        port=port,
        rest_api_port=rest_api_port,
        host=host,
        model_name=model_name,
        model_base_path=model_base_path,
        model_config_file=model_config_file,
        model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=file_system_poll_wait_seconds,
        enable_batching=enable_batching,
        batching_parameters_file=batching_parameters_file,
        monitoring_config_file=monitoring_config_file,
        ssl_config_file=ssl_config_file,
        allow_version_labels_for_unavailable_models=allow_version_labels_for_unavailable_models,
        rest_api_num_threads=rest_api_num_threads,
        grpc_max_threads=grpc_max_threads,
        tensorflow_intra_op_parallelism=tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=tensorflow_inter_op_parallelism,
        max_concurrent_runs=max_concurrent_runs,
        slice_size=slice_size,
        request_log_dir=None if request_log_dir.lower() == "none" else request_log_dir,
        request_log_images=request_log_images,
        keep_referred_images=keep_referred_images,
        keep_referred_max_bytes=int(keep_referred_max_mb * 1024 * 1024),
        keep_referred_max_days=keep_referred_max_days,
        cases_dir=cases_dir,
        cases_base_data=cases_base_data,
        cases_base_manifest=cases_base_manifest,
        limits=Limits(
            max_message_bytes=max_message_bytes,
            max_image_pixels=max_image_pixels,
            max_batch_size=max_batch_size,
            max_request_pixels=max_request_pixels,
            max_concurrent_explains=max_concurrent_explains,
        ),
    )
    for flag, path in (
        ("--model_config_file", model_config_file),
        ("--batching_parameters_file", batching_parameters_file),
        ("--monitoring_config_file", monitoring_config_file),
        ("--ssl_config_file", ssl_config_file),
    ):
        if path and not Path(path).is_file():
            fail(f"{flag}: no such file {path}", as_json)
    try:
        server = Server(options, open_request_log=open_request_log).start()
    except Exception as exc:  # noqa: BLE001 - a bad config is a clear message, not a traceback
        fail(f"cannot start the server: {getattr(exc, 'message', None) or exc}", as_json)
        return
    emit(
        {
            "status": "serving",
            "host": host,
            "grpc_port": server.grpc_port,
            "rest_port": server.rest_port,
            "models": {m: server.core.manager.loaded_versions(m) for m in server.core.manager.models()},
            "tensorflow_threads": server.tensorflow_threads,
        },
        as_json,
        lambda r: (
            f"serving {', '.join(f'{m} {v}' for m, v in r['models'].items())} on gRPC {host}:{r['grpc_port']}"
            f" and REST {host}:{r['rest_port']}"
        ),
    )
    sys.stdout.flush()  # whoever started us (a test, a supervisor) reads the ports now
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("shutting down")
    server.stop()


def make_serve_app(open_request_log: Optional[Callable] = None) -> typer.Typer:
    """The `serve` command with a request-log writer injected (serving.server.RequestSinkOpener).

    Serving does not import monitoring: `leukoflow serve` (pipelines/serve_cli.py) passes monitoring's
    writer in here. Without one, --request_log_dir only warns that the request log is off.
    """
    app = typer.Typer(add_completion=False)
    params = [p for name, p in inspect.signature(serve).parameters.items() if name != "open_request_log"]

    @functools.wraps(serve)
    def command(**kwargs):
        return serve(**kwargs, open_request_log=open_request_log)

    command.__signature__ = inspect.Signature(params)  # Typer sees the flags only
    app.command()(command)
    return app


serve_app = make_serve_app()
