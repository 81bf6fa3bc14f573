"""Dynamic batching: TF Serving's parameters file, merged batches, bounded queue (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from fixtures.images import encode_png, sample_image
from fixtures.model_base import install_version, start_server

pytestmark = pytest.mark.timeout(120)

PARAMS = """
# TF Serving batching parameters
max_batch_size { value: 8 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 2 }
num_batch_threads { value: 1 }
pad_variable_length_inputs: true
"""


def test_parse_batching_parameters():
    from serving.batching import parse_batching_parameters

    p = parse_batching_parameters(PARAMS)
    assert (p.max_batch_size, p.batch_timeout_micros, p.max_enqueued_batches, p.num_batch_threads) == (8, 20000, 2, 1)
    with pytest.raises(ValueError, match="unknown field"):
        parse_batching_parameters("max_batch_sise { value: 8 }")
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        parse_batching_parameters("max_batch_size { value: 0 }")


SPLITTING = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 8 }
num_batch_threads { value: 2 }
enable_large_batch_splitting { value: true }
max_execution_batch_size { value: 4 }
"""


def test_parse_large_batch_splitting():
    from serving.batching import parse_batching_parameters

    p = parse_batching_parameters(SPLITTING)
    assert (p.enable_large_batch_splitting, p.max_execution_batch_size, p.execution_batch_size) == (True, 4, 4)
    off = parse_batching_parameters("max_batch_size { value: 32 }\nmax_execution_batch_size { value: 4 }")
    assert off.execution_batch_size == 32  # TF Serving ignores it unless splitting is on
    assert (
        parse_batching_parameters(
            "max_batch_size { value: 32 }\nenable_large_batch_splitting { value: true }"
        ).execution_batch_size
        == 32
    )
    with pytest.raises(ValueError, match=r"max_execution_batch_size \(64\) must be <= max_batch_size \(32\)"):
        parse_batching_parameters(
            "max_batch_size { value: 32 }\nenable_large_batch_splitting { value: true }\n"
            "max_execution_batch_size { value: 64 }"
        )
    with pytest.raises(ValueError, match="enable_large_batch_splitting cannot be 3"):
        parse_batching_parameters("enable_large_batch_splitting { value: 3 }")
    with pytest.raises(ValueError, match="max_execution_batch_size cannot be true"):
        parse_batching_parameters("max_execution_batch_size { value: true }")


def test_a_large_request_runs_in_execution_sized_pieces_and_answers_in_order():
    """With splitting, no batch the model runs exceeds max_execution_batch_size; answers come back whole, in order."""
    from serving.batching import Batcher, parse_batching_parameters

    sizes: list[int] = []
    batcher = Batcher(parse_batching_parameters(SPLITTING), on_batch=sizes.append)
    results: dict[int, np.ndarray] = {}

    def run(x: dict) -> dict:
        assert len(x["x"]) <= 4
        time.sleep(0.01)
        return {"y": x["x"] * 2, "n": np.full(len(x["x"]), len(x["x"]))}

    def client(i: int, rows: int) -> None:
        results[i] = batcher.submit("k", {"x": np.arange(rows, dtype=np.float32) + 100 * i}, run)["y"]

    threads = [threading.Thread(target=client, args=(i, rows)) for i, rows in enumerate((10, 3, 1, 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batcher.stop()
    for i, rows in enumerate((10, 3, 1, 7)):
        np.testing.assert_array_equal(results[i], (np.arange(rows) + 100 * i) * 2)
    assert sum(sizes) == 21 and max(sizes) <= 4 and len(sizes) >= 6


def test_a_failing_piece_fails_its_request_only():
    from serving.batching import Batcher, parse_batching_parameters
    from serving.errors import ServingError

    batcher = Batcher(parse_batching_parameters(SPLITTING))

    def run(x: dict) -> dict:
        if (x["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": x["x"] * 2}

    bad = np.arange(9, dtype=np.float32)
    bad[6] = -1  # in the second piece of four rows
    with pytest.raises(ServingError, match="negative input"):
        batcher.submit("k", {"x": bad}, run)
    np.testing.assert_array_equal(batcher.submit("k", {"x": np.ones(9, np.float32)}, run)["y"], np.full(9, 2.0))
    batcher.stop()


def test_the_pieces_of_an_expired_split_request_are_not_run():
    """A split request whose deadline passes while its first piece runs: the rest never start."""
    from serving.batching import Batcher, parse_batching_parameters
    from serving.errors import ServingError

    params = parse_batching_parameters(
        SPLITTING.replace("num_batch_threads { value: 2 }", "num_batch_threads { value: 1 }")
    )
    batcher = Batcher(params)
    ran: list[int] = []

    def slow(x: dict) -> dict:
        ran.append(len(x["x"]))
        time.sleep(0.3)
        return {"y": x["x"]}

    with pytest.raises(ServingError) as info:
        batcher.submit("k", {"x": np.zeros(32, np.float32)}, slow, timeout=0.1)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    np.testing.assert_array_equal(batcher.submit("k", {"x": np.ones(2, np.float32)}, slow, timeout=5)["y"], np.ones(2))
    batcher.stop()
    assert ran == [4, 2]  # one piece of the 32 rows started; the other seven were dropped


def test_batcher_merges_concurrent_requests_and_splits_results():
    from serving.batching import Batcher, parse_batching_parameters

    sizes: list[int] = []
    batcher = Batcher(parse_batching_parameters(PARAMS), on_batch=sizes.append)
    results: dict[int, np.ndarray] = {}

    def run(x: dict) -> dict:
        return {"y": x["x"] * 2}

    def client(i: int) -> None:
        results[i] = batcher.submit("k", {"x": np.full((2, 3), i, np.float32)}, run)["y"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.stop()
    for i in range(4):
        np.testing.assert_array_equal(results[i], np.full((2, 3), 2 * i))
    assert max(sizes) > 2  # at least two requests shared a batch
    assert sum(sizes) == 8


def test_a_failing_batch_is_rerun_request_by_request():
    """One request the model refuses fails alone; the requests merged with it still get their answers."""
    from serving.batching import Batcher, parse_batching_parameters
    from serving.errors import ServingError

    calls: list[int] = []
    batcher = Batcher(parse_batching_parameters(PARAMS))
    gate = threading.Barrier(4)
    outcome: dict[int, object] = {}

    def run(x: dict) -> dict:
        calls.append(len(x["x"]))
        if (x["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": x["x"] * 2}

    def client(i: int) -> None:
        gate.wait()
        try:
            outcome[i] = batcher.submit("k", {"x": np.full((1, 2), -1.0 if i == 2 else float(i))}, run)["y"]
        except ServingError as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batcher.stop()
    assert isinstance(outcome[2], ServingError) and outcome[2].code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome[2].message == "negative input"
    for i in (0, 1, 3):
        np.testing.assert_array_equal(outcome[i], np.full((1, 2), 2.0 * i))
    assert max(calls) > 1  # the bad request really was merged with others before the rerun


def test_batcher_queue_full_is_resource_exhausted_and_too_big_is_invalid():
    from serving.batching import QUEUE_FULL, Batcher, parse_batching_parameters
    from serving.errors import ServingError

    release = threading.Event()
    batcher = Batcher(parse_batching_parameters(PARAMS))

    def slow(x: dict) -> dict:
        release.wait(30)
        return x

    # One batch runs (blocked), then the queue holds max_enqueued_batches * max_batch_size = 16 rows.
    running = threading.Thread(target=lambda: batcher.submit("k", {"x": np.zeros((8, 1))}, slow))
    running.start()
    time.sleep(0.3)
    waiting = [threading.Thread(target=lambda: batcher.submit("k", {"x": np.zeros((8, 1))}, slow)) for _ in range(2)]
    for t in waiting:
        t.start()
    time.sleep(0.1)
    with pytest.raises(ServingError) as info:
        batcher.submit("k", {"x": np.zeros((1, 1))}, slow)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.message == QUEUE_FULL
    with pytest.raises(ServingError) as too_big:
        batcher.submit("k", {"x": np.zeros((9, 1))}, slow)
    assert too_big.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert too_big.value.message == "Task size 9 is larger than maximum input batch size 8"
    release.set()
    for t in [running, *waiting]:
        t.join(30)
    batcher.stop()


def test_batching_server_batches_concurrent_grpc_requests(exported_versions, tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    params = tmp_path / "batching.config"
    params.write_text(PARAMS.replace("max_enqueued_batches { value: 2 }", "max_enqueued_batches { value: 100 }"))
    srv = start_server(base, rest_api_port=-1, enable_batching=True, batching_parameters_file=str(params))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        errors: list[str] = []
        single = {}

        def client(i: int) -> None:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "leukemia"
            req.inputs["images"].CopyFrom(tf.make_tensor_proto([encode_png(sample_image(i))], dtype=tf.string))
            try:
                single[i] = tf.make_ndarray(stub.Predict(req, timeout=30).outputs["probabilities"])
            except grpc.RpcError as exc:
                errors.append(str(exc.details()))

        no_deadline = predict_pb2.PredictRequest()
        no_deadline.model_spec.name = "leukemia"
        no_deadline.inputs["images"].CopyFrom(tf.make_tensor_proto([encode_png(sample_image(0))], dtype=tf.string))
        assert stub.Predict(no_deadline).model_spec.version.value == 1  # a client without a deadline
        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        servable = srv.core.manager.resolve("leukemia")
        for i in range(12):  # each caller got its own row of the merged batch
            alone = servable.run("", {"images": np.array([encode_png(sample_image(i))], dtype=object)})["probabilities"]
            np.testing.assert_allclose(single[i], alone, rtol=1e-5, atol=1e-6)
        text = srv.core.metrics.render().decode()
        count = [line for line in text.splitlines() if line.startswith("leukoflow_serving_batch_size_count")][0]
        total = [line for line in text.splitlines() if line.startswith("leukoflow_serving_batch_size_sum")][0]
        assert float(total.split()[-1]) == 13  # every request once; warmup runs outside the batcher
        assert float(count.split()[-1]) < 13  # fewer runs than requests: they were merged

        # A truncated image sent among good ones: only its caller gets INVALID_ARGUMENT, naming the image.
        good = encode_png(sample_image(1))
        truncated = good[: len(good) // 2]
        bad_errors: list[tuple] = []

        def mixed(i: int) -> None:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "leukemia"
            req.inputs["images"].CopyFrom(tf.make_tensor_proto([truncated if i == 3 else good], dtype=tf.string))
            try:
                stub.Predict(req, timeout=30)
            except grpc.RpcError as exc:
                bad_errors.append((i, exc.code(), exc.details()))

        threads = [threading.Thread(target=mixed, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [(i, code) for i, code, _ in bad_errors] == [(3, grpc.StatusCode.INVALID_ARGUMENT)], bad_errors
        assert "input images[0] cannot be decoded" in bad_errors[0][2]
        channel.close()
    finally:
        srv.stop()


def test_batcher_deadline_while_queued():
    from serving.batching import Batcher, parse_batching_parameters
    from serving.errors import ServingError

    release = threading.Event()
    batcher = Batcher(parse_batching_parameters(PARAMS))
    blocker = threading.Thread(
        target=lambda: batcher.submit("k", {"x": np.zeros((8, 1))}, lambda x: (release.wait(30), x)[1])
    )
    blocker.start()
    time.sleep(0.2)
    with pytest.raises(ServingError) as info:
        batcher.submit("k", {"x": np.zeros((1, 1))}, lambda x: x, timeout=0.2)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    release.set()
    blocker.join(30)
    batcher.stop()


def test_handler_threads_default_fills_batches():
    from serving.batching import BatchingParameters
    from serving.server import DEFAULT_HANDLER_THREADS, handler_threads

    assert handler_threads(None, None) == DEFAULT_HANDLER_THREADS
    assert handler_threads(7, BatchingParameters(max_batch_size=32, num_batch_threads=4)) == 7  # the flag wins
    assert handler_threads(None, BatchingParameters(max_batch_size=32, num_batch_threads=4)) == 160
    assert handler_threads(None, BatchingParameters(max_batch_size=2, num_batch_threads=1)) == DEFAULT_HANDLER_THREADS
    split = BatchingParameters(
        max_batch_size=32, num_batch_threads=4, enable_large_batch_splitting=True, max_execution_batch_size=8
    )
    assert handler_threads(None, split) == 40  # batches of 8 rows, not of 32
    with pytest.raises(ValueError, match="handler threads must be >= 1"):
        handler_threads(0, None)


def test_concurrent_clients_beyond_sixteen_share_one_full_batch(exported_versions, tmp_path):
    """24 simultaneous gRPC calls fill one batch of 24: no handler-thread cap splits them."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    params = tmp_path / "batching.config"
    # A long timeout: a batch runs early only when full, so its size shows how many requests could wait at once.
    params.write_text(
        "max_batch_size { value: 24 }\nbatch_timeout_micros { value: 20000000 }\n"
        "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: 1 }\n"
    )
    srv = start_server(base, rest_api_port=-1, enable_batching=True, batching_parameters_file=str(params))
    sizes: list[int] = []
    srv.core.batcher._on_batch = sizes.append
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "leukemia"
        req.inputs["images"].CopyFrom(tf.make_tensor_proto([encode_png(sample_image(1))], dtype=tf.string))
        errors: list[str] = []

        def client() -> None:
            try:
                stub.Predict(req, timeout=15)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [] and sizes == [24]
        assert time.monotonic() - started < 15  # ran because it was full, not because of the timeout
        channel.close()
    finally:
        srv.stop()
