"""The proxy's response reader: only the outputs a record copies are converted, and they equal tensor_to_array.

The reader runs in the request-log writer's thread, where every microsecond holds the GIL the proxy's gRPC
threads need, so it has a fast path for float outputs; these tests pin that it converts exactly like
monitoring.request_log.tensor_to_array for every layout TensorFlow Serving uses.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving")


def _response(outputs: dict) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = "leukemia"
    response.model_spec.version.value = 3
    for name, proto in outputs.items():
        response.outputs[name].CopyFrom(proto if not isinstance(proto, np.ndarray) else tf.make_tensor_proto(proto))
    return response.SerializeToString()


def test_reader_converts_what_a_record_copies_like_tensor_to_array():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    from monitoring.proxy import _predict_reader
    from monitoring.request_log import tensor_to_array

    def shaped(dims, **values):
        return tensor_pb2.TensorProto(
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
            ),
            **values,
        )

    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    outputs = {
        "probabilities": shaped([2, 4], dtype=types_pb2.DT_FLOAT, float_val=probs.ravel().tolist()),  # one per element
        "feature_contrast": shaped([2], dtype=types_pb2.DT_FLOAT, float_val=[0.25]),  # one value repeated to the shape
        "feature_hue_mean": shaped(
            [2], dtype=types_pb2.DT_FLOAT, tensor_content=np.array([0.5, 0.75], np.float32).tobytes()
        ),  # packed bytes
        "ood_score": shaped([], dtype=types_pb2.DT_FLOAT, float_val=[3.5]),  # a scalar
        "refer": shaped([2], dtype=types_pb2.DT_BOOL, bool_val=[True, False]),
        "label": shaped([2], dtype=types_pb2.DT_STRING, string_val=[b"Pro", b"Benign"]),  # not logged
        "unlisted": shaped([2], dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0]),  # not logged
    }
    names = ("probabilities", "scores", "feature_contrast", "feature_hue_mean", "ood_score", "refer", "missing")
    meta, arrays = _predict_reader(_response(outputs), "stable", names)()

    assert meta == {"model": "leukemia", "version": 3, "label": "stable", "signature": None}
    assert set(arrays) == {"probabilities", "feature_contrast", "feature_hue_mean", "ood_score", "refer"}
    for name, array in arrays.items():
        want = tensor_to_array(outputs[name])
        assert array.dtype == want.dtype and array.shape == want.shape, name
        np.testing.assert_array_equal(array, want)
    np.testing.assert_array_equal(arrays["probabilities"], probs)
    np.testing.assert_array_equal(arrays["feature_contrast"], [0.25, 0.25])


def test_reader_records_equal_those_from_the_full_response():
    """What the writer builds from the reader's arrays equals what it builds from every output as a proto."""
    from tensorflow_serving.apis import predict_pb2

    from components.image_features import FEATURE_OUTPUTS
    from monitoring.proxy import _predict_reader
    from monitoring.request_log import DEFAULT_LOGGED_OUTPUTS, records_from_outputs

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=3).astype(np.float32)
    outputs = {
        "probabilities": probs,
        "label": np.array([b"a", b"b", b"c"]),
        "ood_score": rng.random(3).astype(np.float32),
        "in_distribution": np.array([True, False, True]),
        **{name: rng.random(3).astype(np.float32) for name in FEATURE_OUTPUTS},
    }
    raw = _response(outputs)
    names = ("probabilities", "scores", *FEATURE_OUTPUTS, *DEFAULT_LOGGED_OUTPUTS)
    meta, arrays = _predict_reader(raw, None, names)()
    full = dict(predict_pb2.PredictResponse.FromString(raw).outputs)
    got = records_from_outputs(meta, arrays)
    assert len(got) == 3 and "features" in got[0] and "outputs" in got[0]
    assert got == records_from_outputs(meta, full)


def test_the_writer_reads_responses_in_batches_and_loses_none(tmp_path, monkeypatch):
    """The tap reads relayed calls in batches (TAP_INTERVAL_S): few writes for many calls, none lost at stop."""
    from concurrent import futures

    import grpc

    from components.image_features import FEATURE_OUTPUTS
    from monitoring import request_log
    from monitoring.proxy import PREDICT_METHOD, LoggingProxy

    rng = np.random.default_rng(1)
    canned = _response(
        {
            "probabilities": rng.dirichlet(np.ones(4), size=1).astype(np.float32),
            **{name: rng.random(1).astype(np.float32) for name in FEATURE_OUTPUTS},
        }
    )

    class Upstream(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(lambda body, context: canned)

    writes = []
    real_append = request_log.RequestLog.append_lines
    monkeypatch.setattr(
        request_log.RequestLog,
        "append_lines",
        lambda self, data: (writes.append(data.count(b"\n")), real_append(self, data))[1],
    )
    upstream = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Upstream()])
    port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    writer = request_log.RequestLogWriter(tmp_path)
    proxy = LoggingProxy(f"127.0.0.1:{port}", None, writer, host="127.0.0.1", grpc_port=0, rest_port=-1).start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{proxy.grpc_port}")
        predict = channel.unary_unary(PREDICT_METHOD)
        for _ in range(8):
            assert predict(b"", timeout=10) == canned  # the reply is not held back, only the record
        assert proxy.flush(timeout=10)
        assert sum(writes) == 8 and len(writes) < 8, writes  # unbatched, each call is a write of its own
        for _ in range(3):
            predict(b"", timeout=10)
        channel.close()
    finally:
        proxy.stop()  # closes the writer: what is queued is written, fresh or not
        upstream.stop(0)
    lines = (tmp_path / request_log.FILE_NAME).read_text().splitlines()
    assert len(lines) == 11 and writer.dropped == 0
