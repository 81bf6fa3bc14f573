"""gRPC front end: TF Serving's PredictionService and ModelService on the official generated servicers.

The servicers only translate between gRPC and serving.handlers (shared with the REST front end).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from typing import Any

import grpc

from serving.errors import detached_error
from serving.handlers import classify, get_model_metadata, get_model_status, predict, reload_config, spec_parts

log = logging.getLogger(__name__)


def _servicer_classes() -> tuple[type, type]:
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, core: Any) -> None:
            self.core = core

        def _call(self, api: str, fn: Any, request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "UNKNOWN"
            name, version, _ = spec_parts(request.model_spec) if request.HasField("model_spec") else ("", None, None)
            self.core.set_deadline(context.time_remaining(), context.is_active)
            try:
                self.core.remaining()  # it may have waited for a handler thread past its deadline: do nothing
                response = fn(self.core, request)
                code = "OK"
                if request_id := getattr(self.core.local, "request_id", None):
                    # The id a pathologist's label names (POST /v1/cases), as REST's X-Request-Id header.
                    context.set_trailing_metadata((("x-request-id", request_id),))
                version = response.model_spec.version.value if hasattr(response, "model_spec") else version
                return response
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
                err = detached_error(exc)
                code = err.code.name
                version = getattr(self.core.local, "version", None) or version  # the version that failed, if resolved
                if err.code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", api)
                context.abort(err.code, err.message)
            finally:
                self.core.metrics.observe(api, name, version, code, time.perf_counter() - start)

        def Predict(self, request, context):  # noqa: N802 - gRPC method name
            return self._call("grpc_predict", predict, request, context)

        def Classify(self, request, context):  # noqa: N802
            return self._call("grpc_classify", classify, request, context)

        def GetModelMetadata(self, request, context):  # noqa: N802
            return self._call("grpc_metadata", get_model_metadata, request, context)

        def Regress(self, request, context):  # noqa: N802
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported: the model has no regression signature"
            )

        def MultiInference(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this server")

    class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
        def __init__(self, core: Any) -> None:
            self.core = core

        def GetModelStatus(self, request, context):  # noqa: N802
            try:
                return get_model_status(self.core, request)
            except Exception as exc:  # noqa: BLE001
                err = detached_error(exc)
                context.abort(err.code, err.message)

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802
            try:
                return reload_config(self.core, request)
            except Exception as exc:  # noqa: BLE001
                err = detached_error(exc)
                context.abort(err.code, err.message)

    return PredictionServicer, ModelServicer


def start_grpc_server(core: Any, host: str, port: int, max_threads: int, ssl: Any = None) -> tuple[grpc.Server, int]:
    """Start the gRPC server; returns it and the bound port."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    prediction_cls, model_cls = _servicer_classes()
    limit = core.limits.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        maximum_concurrent_rpcs=max_threads * 64,  # beyond this, RESOURCE_EXHAUSTED instead of an unbounded queue
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction_cls(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_cls(core), server)
    address = f"{host}:{port}"
    if ssl is not None:
        creds = grpc.ssl_server_credentials(
            [(ssl.server_key, ssl.server_cert)], root_certificates=ssl.custom_ca, require_client_auth=ssl.client_verify
        )
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"cannot bind gRPC to {address}")
    server.start()
    return server, bound
