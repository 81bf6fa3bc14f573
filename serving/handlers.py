"""The request handlers both front ends call: Predict, Classify, GetModelMetadata, GetModelStatus, reload.

They take and return TF Serving's official protos (the REST front end converts JSON to and from them),
so gRPC and REST answer alike, as in TF Serving. Front-end neutral: nothing here knows about gRPC
servicers or HTTP; the front ends import this module, never each other, and neither imports the server.
`core` is the server's ServingCore (resolve, execute, limits, manager).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np

from components.servable import DEFAULT_SIGNATURE, example_list
from serving.errors import ServingError, detached_error, invalid_argument
from serving.limits import check_batch, example_images

log = logging.getLogger(__name__)

PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
CLASSIFY_METHOD = "tensorflow/serving/classify"
SIGNATURE_DEF_FIELD = "signature_def"


def spec_parts(spec: Any) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a ModelSpec."""
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" and spec.version_label else None
    return spec.name, version, label


def _fill_spec(out: Any, servable: Any, signature_name: str | None) -> None:
    out.name = servable.name
    out.version.value = servable.version
    if signature_name is not None:
        out.signature_name = signature_name


def to_ndarray(alias: str, proto: Any) -> np.ndarray:
    """TensorProto -> numpy, INVALID_ARGUMENT on a malformed tensor."""
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception:  # noqa: BLE001
        raise invalid_argument(f"tensor parsing error: {alias}") from None


# TensorProto fields that carry values, by their per-value size in bytes (strings: their own length).
_VALUE_FIELDS = {
    "half_val": 2,
    "float_val": 4,
    "double_val": 8,
    "int_val": 4,
    "int64_val": 8,
    "bool_val": 1,
    "uint32_val": 4,
    "uint64_val": 8,
    "dcomplex_val": 16,
    "scomplex_val": 8,
}


def check_tensor_proto(alias: str, proto: Any, limits: Any) -> None:
    """Refuse a TensorProto from its shape and byte counts, before any of it becomes a numpy array.

    The batch (first) dimension must be within max_batch_size, and the values may not outnumber the
    shape (a [1] tensor with fifteen million strings would otherwise become fifteen million objects).
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid_argument(f"tensor parsing error: {alias} has a negative dimension {dims}")
    if dims:
        check_batch(alias, dims[0], limits)
    elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if proto.tensor_content:
        itemsize = max(1, len(proto.tensor_content) // max(1, elements))
        if len(proto.tensor_content) != elements * itemsize:
            raise invalid_argument(
                f"tensor parsing error: {alias}: {len(proto.tensor_content)} bytes of content "
                f"do not fit its shape {dims}"
            )
        return
    strings = len(proto.string_val)
    if strings > elements:
        raise invalid_argument(
            f"tensor parsing error: {alias} holds {strings} strings for its shape {dims} ({elements} elements)"
        )
    total = sum(len(v) for v in proto.string_val) if strings else 0
    for name, size in _VALUE_FIELDS.items():
        count = len(getattr(proto, name))
        if count > elements * (2 if name.endswith("complex_val") else 1):
            raise invalid_argument(f"tensor parsing error: {alias} holds {count} values for its shape {dims}")
        total += count * size
    if total > limits.max_message_bytes:
        raise invalid_argument(
            f"input {alias!r} holds {total} bytes, more than the limit max_message_bytes={limits.max_message_bytes}"
        )


def to_tensor_proto(arr: np.ndarray) -> Any:
    import tensorflow as tf

    return tf.make_tensor_proto(arr)


def run_predict(
    core: Any,
    servable: Any,
    label: str | None,
    signature_name: str,
    inputs: dict[str, np.ndarray],
    output_filter: list[str],
) -> tuple[str, dict[str, np.ndarray]]:
    """The Predict path shared by gRPC and REST on a resolved servable: (signature key, filtered outputs)."""
    key = signature_name or DEFAULT_SIGNATURE
    sig = servable.signature(key)  # FAILED_PRECONDITION 'Serving signature key "x" not found.'
    if sig.method_name not in PREDICT_METHODS:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            "Expected prediction signature method_name to be one of {"
            + ", ".join(PREDICT_METHODS)
            + f"}}. Was: {sig.method_name}",
        )
    for alias in inputs:
        if alias not in sig.inputs:
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                f"{{{','.join(sorted(sig.inputs))}}}."
            )
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    outputs = core.execute(servable, key, inputs, label=label)
    if output_filter:
        outputs = {k: v for k, v in outputs.items() if k in seen}
    return key, outputs


def predict(core: Any, request: Any) -> Any:
    """PredictionService.Predict."""
    from tensorflow_serving.apis import predict_pb2

    name, version, label = spec_parts(request.model_spec)
    servable = core.resolve(name, version, label)
    for alias, t in request.inputs.items():  # all of them, before the first is materialised
        check_tensor_proto(alias, t, core.limits)
    inputs = {alias: to_ndarray(alias, t) for alias, t in request.inputs.items()}
    key, outputs = run_predict(
        core, servable, label, request.model_spec.signature_name, inputs, list(request.output_filter)
    )
    response = predict_pb2.PredictResponse()
    _fill_spec(response.model_spec, servable, key)
    for alias, arr in outputs.items():
        response.outputs[alias].CopyFrom(to_tensor_proto(arr))
    return response


def run_classify(
    core: Any, servable: Any, label: str | None, signature_name: str, examples: list[bytes]
) -> tuple[str, list[list[tuple[str, float]]]]:
    """The Classify path shared by gRPC and REST on a resolved servable: (key, per example [(class, score)])."""
    key = signature_name or DEFAULT_SIGNATURE
    if key not in servable.signatures:
        raise invalid_argument(f"No signature was found with the name: {key}")
    sig = servable.signatures[key]
    if sig.method_name != CLASSIFY_METHOD:
        raise invalid_argument(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {sig.method_name}"
        )
    if not examples:
        raise invalid_argument("Input is empty.")
    if len(sig.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    (alias,) = list(sig.inputs)
    check_batch("examples", len(examples), core.limits)
    images = core.check_encoded("examples", np.array(example_images(examples), dtype=object))
    outputs = core.execute(
        servable, key, {alias: np.array(examples, dtype=object)}, label=label, encoded={"examples": images}
    )
    scores = outputs.get("scores")
    classes = outputs.get("classes")
    result = []
    for i in range(len(examples)):
        row = []
        n = scores.shape[1] if scores is not None else classes.shape[1]
        for j in range(n):
            cls = classes[i][j].decode("utf-8", "replace") if classes is not None else ""
            row.append((cls, float(scores[i][j]) if scores is not None else 0.0))
        result.append(row)
    return key, result


def classify(core: Any, request: Any) -> Any:
    """PredictionService.Classify."""
    from tensorflow_serving.apis import classification_pb2

    name, version, label = spec_parts(request.model_spec)
    servable = core.resolve(name, version, label)
    key, result = run_classify(core, servable, label, request.model_spec.signature_name, example_list(request.input))
    response = classification_pb2.ClassificationResponse()
    _fill_spec(response.model_spec, servable, key)
    for row in result:
        c = response.result.classifications.add()
        for cls, score in row:
            c.classes.add(label=cls, score=score)
    return response


def get_model_metadata(core: Any, request: Any) -> Any:
    """PredictionService.GetModelMetadata: the SignatureDefMap packed in an Any under 'signature_def'."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    servable = core.resolve(*spec_parts(request.model_spec))
    sdm = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signatures.items():
        sdm.signature_def[key].CopyFrom(sig)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _fill_spec(response.model_spec, servable, None)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(sdm)
    return response


def get_model_status(core: Any, request: Any) -> Any:
    """ModelService.GetModelStatus."""
    from tensorflow_serving.apis import get_model_status_pb2

    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    name, version, label = spec_parts(request.model_spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for v, st in core.manager.status(name, version, label):
        mvs = response.model_version_status.add(version=v, state=st.state)
        mvs.status.error_code = st.error_code
        mvs.status.error_message = st.error_message
    return response


def reload_config(core: Any, request: Any) -> Any:
    """ModelService.HandleReloadConfigRequest: apply a ModelServerConfig; the response carries the status too."""
    from tensorflow_serving.apis import model_management_pb2

    from serving.manager import entries_from_proto

    response = model_management_pb2.ReloadConfigResponse()
    try:
        core.manager.set_config(entries_from_proto(request.config))
    except Exception as exc:  # noqa: BLE001
        err = detached_error(exc)
        response.status.error_code = err.code.value[0]
        response.status.error_message = err.message
        raise ServingError(err.code, err.message) from None
    return response
