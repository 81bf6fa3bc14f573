"""TF Serving's canonical-code -> HTTP status mapping, and how exceptions become codes."""

from __future__ import annotations

import grpc
import pytest


@pytest.mark.parametrize(
    "code, status",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
    ],
)
def test_http_status_mapping(code, status):
    from serving.errors import ServingError

    assert ServingError(code, "x").http_status == status


def test_exceptions_to_codes():
    from components.servable import InputError, SignatureNotFound
    from serving.errors import from_exception, servable_not_found

    assert (
        from_exception(SignatureNotFound('Serving signature key "x" not found.')).code
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        from_exception(SignatureNotFound('Serving signature key "x" not found.')).message
        == 'Serving signature key "x" not found.'
    )
    assert from_exception(InputError("bad")).code == grpc.StatusCode.INVALID_ARGUMENT
    assert from_exception(TimeoutError()).code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert from_exception(RecursionError()).code == grpc.StatusCode.INVALID_ARGUMENT
    assert from_exception(RuntimeError("boom")).code == grpc.StatusCode.INTERNAL
    assert servable_not_found("m").message == "Servable not found for request: Latest(m)"
    assert servable_not_found("m", 3).message == "Servable not found for request: Specific(m, 3)"


def test_tensorflow_errors_keep_their_code_and_lose_the_stack():
    import tensorflow as tf

    from serving.errors import from_exception

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(s):
        return tf.io.decode_image(s, channels=3, expand_animations=False)

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        decode(tf.constant(b"not an image"))
    err = from_exception(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Detected at node" not in err.message and err.message


def test_graph_error_inside_a_loop_keeps_the_ops_message():
    """The exported graph decodes inside tf.map_fn; the client gets the decoder's words, not the node trace."""
    import tensorflow as tf

    from serving.errors import from_exception

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode_all(batch):
        return tf.map_fn(
            lambda s: tf.io.decode_image(s, channels=3, expand_animations=False),
            batch,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        )

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        decode_all(tf.constant([b"\xff\xd8\xff\xe0" + b"\x00" * 64]))  # a JPEG marker, then nothing
    err = from_exception(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Detected at node" not in err.message and "[[" not in err.message
    assert "JPEG" in err.message or "image" in err.message.lower(), err.message
