"""One loaded model version: the SavedModel, its SignatureDefs, a typed run() and the warmup replay.

The server, the gate's infra validation and the page all go through this class, so a model that
loads and warms up here is a model the server can serve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
DEFAULT_SIGNATURE = "serving_default"
# TF Serving replays at most this many warmup records (kMaxNumWarmupRecords is 1000).
MAX_WARMUP_RECORDS = 1000


class SignatureNotFound(KeyError):
    """The requested signature key is not in the SavedModel."""


class InputError(ValueError):
    """Inputs do not match the signature (names, dtype or shape)."""


def read_signature_defs(version_dir: str | Path) -> dict[str, Any]:
    """SignatureDef protos from `saved_model.pb` (the first MetaGraph tagged `serve`)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    graphs = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags] or list(proto.meta_graphs)
    if not graphs:
        raise ValueError(f"{version_dir}: saved_model.pb has no MetaGraph")
    # Every entry, __saved_model_init_op included: TF Serving's GetModelMetadata returns them all.
    return dict(graphs[0].signature_def.items())


def _np_dtype(tf_dtype_enum: int) -> Any:
    """numpy dtype for a DataType enum (strings stay object arrays of bytes)."""
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(tf_dtype_enum)
    return object if dtype == tf.string else dtype.as_numpy_dtype


@dataclass
class Servable:
    """A loaded SavedModel version: `.name`, `.version`, `.path`, `.signatures` (SignatureDef map)."""

    name: str
    version: int
    path: Path
    signatures: dict[str, Any]
    _loaded: Any = field(repr=False, default=None)
    warmed_up: bool = False

    @classmethod
    def load(cls, version_dir: str | Path, name: str | None = None) -> Servable:
        """Load `<base>/<name>/<version>/`; the name defaults to the parent directory's name."""
        import tensorflow as tf

        path = Path(version_dir).resolve()
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{path}: no saved_model.pb (not a SavedModel version directory)")
        try:
            version = int(path.name)
        except ValueError:
            version = 0  # a bare export directory, e.g. the trainer's out_dir/saved_model
        signatures = read_signature_defs(path)
        loaded = tf.saved_model.load(str(path))
        return cls(name=name or path.parent.name, version=version, path=path, signatures=signatures, _loaded=loaded)

    def signature(self, signature_name: str | None) -> Any:
        """The SignatureDef for a key ('' or None means serving_default)."""
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise SignatureNotFound(f'Serving signature key "{key}" not found.')
        return self.signatures[key]

    def input_specs(self, signature_name: str | None) -> dict[str, tuple[Any, list[int] | None]]:
        """Per input alias: (numpy dtype, shape with -1 for unknown dims, or None for unknown rank)."""
        sig = self.signature(signature_name)
        out = {}
        for alias, info in sig.inputs.items():
            shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
            out[alias] = (_np_dtype(info.dtype), shape)
        return out

    def prepare(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check inputs against the signature (names, rank, fixed dims, dtype); return them in the signature's dtypes."""
        key = signature_name or DEFAULT_SIGNATURE
        sig = self.signature(key)
        expected = set(sig.inputs)
        if set(inputs) != expected:
            missing = sorted(expected - set(inputs))
            extra = sorted(set(inputs) - expected)
            raise InputError(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
            )
        out = {}
        for alias, (dtype, shape) in self.input_specs(key).items():
            arr = np.asarray(inputs[alias])
            if shape is not None:
                if arr.ndim != len(shape) or any(s != -1 and s != a for s, a in zip(shape, arr.shape)):
                    raise InputError(
                        f"input {alias!r} has shape {list(arr.shape)}; signature {key!r} expects "
                        f"{['?' if s == -1 else s for s in shape]}"
                    )
            is_text = arr.dtype.kind in ("O", "S", "U")
            if (dtype is object) != is_text or (dtype is not object and arr.dtype.kind not in "biuf"):
                want = "string" if dtype is object else np.dtype(dtype).name
                raise InputError(f"input {alias!r} must be {want}, got {arr.dtype.name}")
            if dtype is object:
                out[alias] = arr.astype(object) if arr.dtype.kind == "U" else arr
            else:
                out[alias] = arr.astype(dtype, copy=False)
        return out

    def run_prepared(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on inputs already checked by prepare()."""
        import tensorflow as tf

        key = signature_name or DEFAULT_SIGNATURE
        if key not in self._loaded.signatures:
            raise SignatureNotFound(f'Serving signature key "{key}" not found.')
        tensors = {
            k: tf.constant(v, dtype=tf.string) if v.dtype == object else tf.constant(v) for k, v in inputs.items()
        }
        result = self._loaded.signatures[key](**tensors)
        return {k: v.numpy() for k, v in result.items()}

    def run(self, signature_name: str | None, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on numpy inputs; returns every output as numpy (strings as bytes objects)."""
        return self.run_prepared(signature_name, self.prepare(signature_name, inputs))

    def warmup_records(self) -> list[Any]:
        """The PredictionLog records of `assets.extra/tf_serving_warmup_requests` (empty if absent)."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / WARMUP_FILE
        if not path.is_file():
            return []
        records = []
        for raw in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog()
            entry.ParseFromString(raw.numpy())
            records.append(entry)
        return records

    def warmup(self) -> int:
        """Replay the warmup requests (Predict and Classify logs), as TF Serving does before serving a version.

        Raises if a record fails, so a broken version never takes traffic. Returns the number replayed.
        """
        import tensorflow as tf

        count = 0
        for entry in self.warmup_records():
            kind = entry.WhichOneof("log_type")
            if kind == "predict_log":
                req = entry.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
                self.run(req.model_spec.signature_name, inputs)
            elif kind == "classify_log":
                req = entry.classify_log.request
                key = req.model_spec.signature_name or DEFAULT_SIGNATURE
                examples = example_list(req.input)
                (alias,) = list(self.signature(key).inputs)
                self.run(key, {alias: np.array(examples, dtype=object)})
            else:
                raise ValueError(f"warmup record type {kind!r} is not supported")
            count += 1
        self.warmed_up = True
        log.info("warmed up %s version %s with %d record(s)", self.name, self.version, count)
        return count


def example_list(inp: Any) -> list[bytes]:
    """Serialized tf.Examples of a tensorflow.serving.Input (example_list or example_list_with_context)."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in inp.example_list.examples]
    if kind == "example_list_with_context":
        ctx = inp.example_list_with_context.context
        out = []
        for e in inp.example_list_with_context.examples:
            merged = type(e)()
            merged.CopyFrom(ctx)
            merged.MergeFrom(e)
            out.append(merged.SerializeToString())
        return out
    return []
