"""TF Serving's error model: a canonical gRPC code plus message, and its HTTP status mapping for REST."""

from __future__ import annotations

import grpc

# http_server.cc ToHTTPStatusCode in TensorFlow Serving.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """An error with the canonical code TF Serving would answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @property
    def code_name(self) -> str:
        return self.code.name


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def deadline_exceeded(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def cancelled(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.CANCELLED, message)


def servable_not_found(name: str, version: int | None = None) -> ServingError:
    """NOT_FOUND with ServableRequest::DebugString, exactly as TF Serving's manager says it."""
    what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    return not_found(f"Servable not found for request: {what}")


def from_exception(exc: BaseException) -> ServingError:
    """Map any exception from the model or our own code to a ServingError (TF errors keep their code)."""
    if isinstance(exc, ServingError):
        return exc
    from components.servable import InputError, SignatureNotFound

    if isinstance(exc, SignatureNotFound):
        return failed_precondition(str(exc.args[0]))
    if isinstance(exc, RecursionError):
        return invalid_argument("request is nested too deeply")
    if isinstance(exc, TimeoutError):
        return deadline_exceeded(str(exc) or "Deadline exceeded")
    if isinstance(exc, (InputError, ValueError, TypeError)):
        return invalid_argument(str(exc))
    try:
        import tensorflow as tf

        if isinstance(exc, tf.errors.OpError):
            name = type(exc).__name__.replace("Error", "")
            code_by_name = {
                "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
                "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
                "DeadlineExceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
                "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
                "OutOfRange": grpc.StatusCode.OUT_OF_RANGE,
                "Unimplemented": grpc.StatusCode.UNIMPLEMENTED,
                "NotFound": grpc.StatusCode.NOT_FOUND,
            }
            message = graph_error_message(exc.message)
            return ServingError(code_by_name.get(name, grpc.StatusCode.INTERNAL), message)
    except ImportError:  # pragma: no cover
        pass
    return internal(f"{type(exc).__name__}: {exc}")


def detached_error(exc: BaseException) -> ServingError:
    """`from_exception` as a fresh error with no traceback: safe to keep in a local or hand to another thread.

    Keeping the caught exception itself in a handler's local forms a cycle (error -> traceback -> the handler's
    frame -> error) that holds the request, body and parse state alive until a full garbage collection: it kept
    about 100 MB per refused 60 MB REST body.
    """
    err = from_exception(exc)
    return ServingError(err.code, err.message)


def graph_error_message(text: str) -> str:
    """The op's own message out of a TF graph error.

    Graph errors read "Graph execution error:\n\nDetected at node X defined at (most recent call last):\n
    <stack>\n<message>\n\t [[{{node X}}]] [Op:...]": the message is the last line before the node marker.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    kept = [
        line
        for line in lines
        if line
        and not line.startswith(
            ("[[", "Graph execution error", "Detected at node", "<stack traces", 'File "', "Traceback")
        )
    ]
    return kept[-1] if kept else text.strip()
