"""TF Serving's REST API as JSON: request bodies -> the handlers' numpy inputs, their answers -> JSON.

The codec of the REST front end (serving.rest_server is its HTTP transport): the row (instances) and
columnar (inputs) :predict formats, :classify's examples, and the status and metadata JSON, each
answered through serving.handlers exactly as the gRPC front end is. Errors are ServingErrors; the
transport turns them into `{"error": "..."}` with TF Serving's HTTP status.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import grpc
import numpy as np

from serving import handlers as api
from serving.errors import ServingError, invalid_argument

# ---------------------------------------------------------------- JSON <-> numpy


def _decode_value(alias: str, value: Any, is_string: bool) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except Exception:  # noqa: BLE001
                raise invalid_argument(f"Unable to base64 decode value of input {alias}") from None
        raise invalid_argument(f'input {alias}: JSON object is not a {{"b64": ...}} value')
    if isinstance(value, list):
        return [_decode_value(alias, v, is_string) for v in value]
    if isinstance(value, str):
        if not is_string:
            raise invalid_argument(f"input {alias}: got a string where the signature expects a number")
        return value.encode("utf-8")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        if is_string:
            raise invalid_argument(
                f'input {alias}: got a number where the signature expects a string (use {{"b64": ...}} for bytes)'
            )
        return value
    if value is None:
        raise invalid_argument(f"input {alias}: null is not a valid value")
    raise invalid_argument(f"input {alias}: unsupported JSON value")


def _shape(alias: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    if not value:
        return [0]
    inner = [_shape(alias, v) for v in value]
    if any(s != inner[0] for s in inner):
        raise invalid_argument(f"input {alias}: lists of different lengths (a tensor must be rectangular)")
    return [len(value)] + inner[0]


def to_array(alias: str, value: Any, dtype: Any) -> np.ndarray:
    """A JSON value -> numpy array of the signature's dtype (object of bytes for strings)."""
    is_string = dtype is object
    decoded = _decode_value(alias, value, is_string)
    shape = _shape(alias, decoded)
    if is_string:
        arr = np.empty(shape, dtype=object)
        flat = arr.reshape(-1) if shape else arr.reshape(1)

        def walk(v: Any, out: list) -> None:
            if isinstance(v, list):
                for x in v:
                    walk(x, out)
            else:
                out.append(v)

        items: list = []
        walk(decoded, items)
        for i, item in enumerate(items):
            flat[i] = item
        return arr
    try:
        return np.asarray(decoded, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid_argument(f"input {alias}: {exc}") from None


def _json_value(alias: str, value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind == "S":
            return [_json_value(alias, v) for v in value] if value.ndim else _json_value(alias, value.item())
        return value.tolist()
    if isinstance(value, bytes):
        if alias.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _parse_json(body: bytes):
    """The request body as JSON; TF Serving's INVALID_ARGUMENT message when it is not."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None


BATCH_KEYS = ("instances", "inputs", "examples")  # the lists whose length is the request's batch
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _bounded_list(text: str, i: int, key: str, max_items: int) -> tuple[list, int]:
    """Parse the JSON array at text[i] element by element, refusing once it has more than max_items."""
    items: list = []
    i = _skip_ws(text, i + 1)
    if text.startswith("]", i):
        return items, i + 1
    while True:
        if len(items) == max_items:
            raise invalid_argument(
                f"input {key!r} has a batch of more than {max_items}, more than the limit max_batch_size={max_items}"
            )
        value, i = _DECODER.raw_decode(text, i)
        items.append(value)
        i = _skip_ws(text, i)
        if text.startswith("]", i):
            return items, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip_ws(text, i + 1)


def _bounded_object(text: str, i: int, value) -> tuple[dict, int]:
    """A JSON object whose opening brace is at `i`; `value(key, text, j)` parses each member's value."""
    out: dict = {}
    i = _skip_ws(text, i + 1)
    if text.startswith("}", i):
        return out, i + 1
    while True:
        key, i = _DECODER.raw_decode(text, i)
        if not isinstance(key, str):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        i = _skip_ws(text, i)
        if not text.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
        out[key], i = value(key, text, _skip_ws(text, i + 1))
        i = _skip_ws(text, i)
        if text.startswith("}", i):
            return out, i + 1
        if not text.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip_ws(text, i + 1)


def parse_request(body: bytes, max_items: int):
    """The request body as JSON, with the batch lists (instances, inputs, examples) counted while parsing.

    A body of millions of tiny instances is refused after max_items of them, in microseconds and without
    building the rest; every other value is parsed by the standard decoder. Same result as json.loads.
    """

    def column(key: str, text: str, i: int):  # columnar `inputs`: each list value is bounded like `instances`
        return _bounded_list(text, i, key, max_items) if text.startswith("[", i) else _DECODER.raw_decode(text, i)

    def member(key: str, text: str, i: int):
        if key in BATCH_KEYS and text.startswith("[", i):
            return _bounded_list(text, i, key, max_items)
        if key == "inputs" and text.startswith("{", i):
            return _bounded_object(text, i, column)
        return _DECODER.raw_decode(text, i)

    try:
        text = body.decode("utf-8")
        i = _skip_ws(text, 0)
        if not text.startswith("{", i):
            return _parse_json(body)  # not an object: nothing to bound, and the caller says what is wrong
        out, i = _bounded_object(text, i, member)
        if _skip_ws(text, i) != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
        return out
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None


def predict_json(core: Any, name: str, version: int | None, label: str | None, body: bytes) -> dict:
    """:predict with TF Serving's row (instances -> predictions) and columnar (inputs -> outputs) formats."""
    req = parse_request(body, core.limits.max_batch_size)
    if not isinstance(req, dict):
        raise invalid_argument("JSON Value: not formatted correctly. Expecting object")
    if "instances" in req and "inputs" in req:
        raise invalid_argument("Not both 'instances' and 'inputs' are allowed in a request")
    if "instances" not in req and "inputs" not in req:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    signature_name = req.get("signature_name") or ""
    if not isinstance(signature_name, str):
        raise invalid_argument("'signature_name' key must be a string")
    servable = core.resolve(name, version, label)
    key = signature_name or "serving_default"
    if key not in servable.signatures:
        raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
    specs = servable.input_specs(key)
    inputs: dict[str, np.ndarray] = {}
    row = "instances" in req
    if row:
        instances = req["instances"]
        if not isinstance(instances, list):
            raise invalid_argument("Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument("input 'instances' is an empty batch: at least one element is required")
        named = all(isinstance(x, dict) and set(x) != {"b64"} for x in instances)
        if named:
            for i, inst in enumerate(instances):
                if set(inst) != set(specs):
                    raise invalid_argument(
                        f"instances[{i}] has inputs {{{','.join(sorted(inst))}}}; the signature's are {{{','.join(sorted(specs))}}}"
                    )
            for alias, (dtype, _shape) in specs.items():
                inputs[alias] = to_array(alias, [inst[alias] for inst in instances], dtype)
        else:
            if len(specs) != 1:
                raise invalid_argument(
                    f"instances must be objects naming the inputs {{{','.join(sorted(specs))}}} of a multi-input signature"
                )
            ((alias, (dtype, _shape_)),) = specs.items()
            inputs[alias] = to_array(alias, instances, dtype)
    else:
        columns = req["inputs"]
        if isinstance(columns, dict) and set(columns) != {"b64"}:
            for alias, value in columns.items():
                if alias not in specs:
                    raise invalid_argument(
                        f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                        f"{{{','.join(sorted(specs))}}}."
                    )
                inputs[alias] = to_array(alias, value, specs[alias][0])
        else:
            if len(specs) != 1:
                raise invalid_argument(f"'inputs' must be an object naming the inputs {{{','.join(sorted(specs))}}}")
            ((alias, (dtype, _shape_)),) = specs.items()
            inputs[alias] = to_array(alias, columns, dtype)
    _, outputs = api.run_predict(core, servable, label, signature_name, inputs, [])
    if row:
        n = {v.shape[0] if v.ndim else 0 for v in outputs.values()}
        if len(n) != 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Output tensors have different batch sizes; use the columnar 'inputs' format",
            )
        count = n.pop()
        if len(outputs) == 1:
            ((alias, value),) = outputs.items()
            return {"predictions": [_json_value(alias, value[i]) for i in range(count)]}
        return {"predictions": [{a: _json_value(a, v[i]) for a, v in outputs.items()} for i in range(count)]}
    if len(outputs) == 1:
        ((alias, value),) = outputs.items()
        return {"outputs": _json_value(alias, value)}
    return {"outputs": {a: _json_value(a, v) for a, v in outputs.items()}}


def _feature(name: str, value: Any) -> Any:
    from tensorflow.core.example import feature_pb2

    values = value if isinstance(value, list) else [value]
    f = feature_pb2.Feature()
    if all(isinstance(v, dict) or isinstance(v, str) for v in values):
        f.bytes_list.value.extend(_decode_value(name, v, True) for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        f.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        f.float_list.value.extend(float(v) for v in values)
    else:
        raise invalid_argument(f"feature {name}: values must all be strings/b64, all ints or all floats")
    return f


def _example(obj: Any) -> Any:
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid_argument("Example must be JSON object")
    ex = example_pb2.Example()
    for name, value in obj.items():
        ex.features.feature[name].CopyFrom(_feature(name, value))
    return ex


def classify_json(core: Any, name: str, version: int | None, label: str | None, body: bytes) -> dict:
    """:classify with TF Serving's JSON (examples, optional context) -> {"result": [[[class, score], ...]]}."""
    req = parse_request(body, core.limits.max_batch_size)
    if not isinstance(req, dict) or "examples" not in req:
        raise invalid_argument("Missing 'examples' key")
    if not isinstance(req["examples"], list):
        raise invalid_argument("'examples' must be a list/array")
    context = _example(req["context"]) if "context" in req else None
    serialized = []
    for obj in req["examples"]:
        ex = _example(obj)
        if context is not None:
            merged = type(ex)()
            merged.CopyFrom(context)
            merged.MergeFrom(ex)
            ex = merged
        serialized.append(ex.SerializeToString())
    servable = core.resolve(name, version, label)
    _, result = api.run_classify(core, servable, label, req.get("signature_name") or "", serialized)
    return {"result": [[[cls, score] for cls, score in row] for row in result]}


def _message_json(message: Any, preserve: bool) -> str:
    from google.protobuf import json_format

    try:
        return json_format.MessageToJson(
            message, indent=1, preserving_proto_field_name=preserve, always_print_fields_with_no_presence=True
        )
    except TypeError:  # older protobuf
        return json_format.MessageToJson(
            message, indent=1, preserving_proto_field_name=preserve, including_default_value_fields=True
        )


def status_json(core: Any, name: str, version: int | None, label: str | None) -> str:
    from tensorflow_serving.apis import get_model_status_pb2

    if not name:
        raise invalid_argument("Missing model name in request.")
    req = get_model_status_pb2.GetModelStatusRequest()
    _set_spec(req.model_spec, name, version, label)
    return _message_json(api.get_model_status(core, req), preserve=False)


def metadata_json(core: Any, name: str, version: int | None, label: str | None) -> str:
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not name:
        raise invalid_argument("Missing model name in request.")
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    _set_spec(req.model_spec, name, version, label)
    resp = api.get_model_metadata(core, req)
    sdm = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sdm)
    return (
        '{\n"model_spec":'
        + _message_json(resp.model_spec, True)
        + ',\n"metadata": {"signature_def": '
        + _message_json(sdm, True)
        + "}\n}\n"
    )


def check_version_or_label(version: int | None, label: str | None) -> None:
    """A ModelSpec names a version or a label, never both (TF Serving's message)."""
    if version is not None and label is not None:
        raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")


def _set_spec(spec: Any, name: str, version: int | None, label: str | None) -> None:
    check_version_or_label(version, label)
    spec.name = name
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
