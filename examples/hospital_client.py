#!/usr/bin/env python3
"""Classify blood-smear images with the leukemia model over TensorFlow Serving's gRPC API.

For hospital integrators: needs only `pip install grpcio tensorflow-serving-api` (which brings
TensorFlow for the tensor protos), no leukoflow. Works against the real TensorFlow Serving and
against `leukoflow serve` alike.

    python examples/hospital_client.py --server serving.hospital.local:8500 smear1.jpg smear2.png
    python examples/hospital_client.py --label canary --root-cert ca.pem --json smear1.jpg

The model takes encoded image bytes (JPEG, PNG, BMP, GIF, WebP) and decodes and resizes them
itself; convert TIFF to PNG before sending. It is decision support for a pathologist, not a diagnosis.
A model that knows when it does not know also answers `refer` per image: then this prints
`refer: <why>` instead of a stage (the image is unlike the training images, or several stages fit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL_NAME = "leukemia"
# Index order of the `probabilities` output (also in the model card and GetModelMetadata).
CLASS_NAMES = ("Benign", "Early", "Pre", "Pro")


def predict(stub, images: list[bytes], label: str | None, timeout_s: float, attempts: int = 4):
    """One Predict call; retries UNAVAILABLE (server restarting, pod replaced) with exponential backoff."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "serving_default"
    if label:
        request.model_spec.version_label = label  # "stable" or "canary"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    for attempt in range(attempts):
        try:
            return stub.Predict(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def refer_reason(outputs: dict, i: int) -> str:
    """Why the model refers image i: unlike its training images, or not exactly one stage in its prediction set."""
    if not outputs["in_distribution"][i]:
        return "not like the training images"
    stages = [name for name, inside in zip(CLASS_NAMES, outputs["prediction_set"][i]) if inside]
    return "could be " + " or ".join(stages) if stages else "no stage fits with the required confidence"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--server", default="127.0.0.1:8500", help="host:port of the gRPC endpoint")
    parser.add_argument("--label", default=None, help="version label: stable (default policy) or canary")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--root-cert", default=None, help="PEM CA certificate: connect with TLS")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    if args.root_cert:
        with open(args.root_cert, "rb") as f:
            channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.server)
    images = []
    for path in args.images:
        with open(path, "rb") as f:
            images.append(f.read())

    try:
        with channel:
            response = predict(
                prediction_service_pb2_grpc.PredictionServiceStub(channel), images, args.label, args.timeout
            )
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1

    outputs = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
    version = response.model_spec.version.value
    results = []
    for i, (path, row) in enumerate(zip(args.images, outputs["probabilities"])):
        scores = {name: round(float(p), 4) for name, p in zip(CLASS_NAMES, row)}
        result = {"image": path, "label": max(scores, key=scores.get), "confidences": scores}
        if "refer" in outputs:  # a model without the referral outputs answers as before
            result.update(
                refer=bool(outputs["refer"][i]), reason=refer_reason(outputs, i) if outputs["refer"][i] else None
            )
        results.append(result)
    if args.json:
        print(json.dumps({"model": MODEL_NAME, "version": version, "predictions": results}))
    else:
        for r in results:
            scores = "  ".join(f"{k} {v:.3f}" for k, v in r["confidences"].items())
            answer = f"refer: {r['reason']}" if r.get("refer") else r["label"]
            print(f"{r['image']}: {answer}  ({scores})  model version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
