"""Tell a running model server to apply models.config, and confirm the label answers.

TF Serving applies a changed models.config only when it polls the file
(--model_config_file_poll_wait_seconds) or is sent HandleReloadConfigRequest. Without either, a label
move is on disk but not served; `registry promote/rollback --server HOST:PORT` closes that gap: each
step of the two-step move is sent to the server as it is written, and the move is confirmed by asking
the server which version the label now answers with (GetModelStatus by version label).
Talks TF Serving's public gRPC API only (tensorflow_serving.apis), never this project's server code.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from components import settings

log = logging.getLogger(__name__)

AVAILABLE = 30  # ModelVersionStatus.State
NOT_TOLD = (
    "models.config is written, but no server was told: a running server applies it only if it polls the file "
    "(--model_config_file_poll_wait_seconds) or is told to reload (pass --server HOST:PORT)"
)


class ReloadError(RuntimeError):
    """The server refused the config, or the label does not answer with the version."""


def _stubs(server: str):
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc

    channel = grpc.insecure_channel(server)
    return channel, model_service_pb2_grpc.ModelServiceStub(channel)


def send_config(server: str, config_path: str | Path, timeout_s: float = 60.0) -> None:
    """HandleReloadConfigRequest with the models.config on disk; ReloadError when the server refuses it."""
    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(Path(config_path).read_text(), request.config)
    channel, stub = _stubs(server)
    try:
        response = stub.HandleReloadConfigRequest(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise ReloadError(f"server {server} refused the reload: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    if response.status.error_code:
        raise ReloadError(f"server {server} refused the reload: {response.status.error_message}")


def served_version(
    server: str, name: str, label: str | None = None, version: int | None = None, timeout_s: float = 10.0
) -> int | None:
    """The AVAILABLE version the server answers with for a label (or a version); None when it does not."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if label:
        request.model_spec.version_label = label
    if version is not None:
        request.model_spec.version.value = int(version)
    channel, stub = _stubs(server)
    try:
        response = stub.GetModelStatus(request, timeout=timeout_s)
    except grpc.RpcError:
        return None
    finally:
        channel.close()
    ok = [s.version for s in response.model_version_status if s.state == AVAILABLE]
    return ok[0] if ok else None


def wait_until_served(server: str, name: str, version: int, label: str | None = None, timeout_s: float = 60.0) -> None:
    """Poll until the server answers with `version` (for `label` when given); ReloadError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = served_version(server, name, label=label, version=None if label else version)
        if got == int(version):
            return
        if time.monotonic() > deadline:
            what = f"label {label!r}" if label else f"version {version}"
            raise ReloadError(
                f"server {server} does not answer {name} {what} with version {version} "
                f"after {timeout_s:.0f} s (it answers {got})"
            )
        time.sleep(0.2)


def tell_server(
    server: str,
    config_path: str | Path,
    version: int,
    label: str | None = None,
    name: str = settings.SERVED_MODEL_NAME,
    timeout_s: float = 60.0,
) -> None:
    """Send the config on disk, then wait until the server answers with `version` (by `label` when given)."""
    send_config(server, config_path, timeout_s)
    wait_until_served(server, name, version, label, timeout_s)
    log.info("server %s answers %s %s with version %s", server, name, f"label {label}" if label else "", version)
