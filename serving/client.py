"""A small TensorFlow Serving client on the official `tensorflow_serving.apis` stubs.

Works the same against `leukoflow serve` and the real `tensorflow_model_server`: Predict, Classify,
GetModelStatus and GetModelMetadata, a deadline per call, bounded exponential backoff on UNAVAILABLE
(a server restarting or a pod being replaced), optional TLS. Images are sent as encoded bytes; TIFF
(common from microscope cameras) is converted to PNG here because `tf.io.decode_image` cannot read it.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import domain, settings

log = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:8500"
DEFAULT_SIGNATURE = "serving_default"
INPUT_KEY = "images"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Magic numbers of what tf.io.decode_image reads: sent unchanged.
_TF_DECODABLE = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_TIFF = (b"II*\x00", b"MM\x00*")


class ServingError(RuntimeError):
    """A call failed; `code` is the gRPC status code name (e.g. NOT_FOUND, INVALID_ARGUMENT)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerUnavailable(ServingError):
    """The server could not be reached (UNAVAILABLE after every retry)."""


# The outputs a calibrated export adds (docs/architecture.md, "The serving contract"); older models lack them.
REFER_OUTPUTS = ("ood_score", "in_distribution", "prediction_set", "refer")
LEUKOCYTE_OUTPUT = "leukocyte_in_view"  # exports that refer smears without a white cell add it
NOT_LIKE_TRAINING = "not like the training images"
NO_WHITE_CELL = "no white cell in view"


def refer_reason(in_distribution: bool, prediction_set: Sequence[str], leukocyte_in_view: bool = True) -> str:
    """Why the model refers an image, in words: unlike its training images, no white cell to read, or not exactly
    one stage fits (in that order: an image unlike any smear is said to be so before its cells are looked for)."""
    if not in_distribution:
        return NOT_LIKE_TRAINING
    if not leukocyte_in_view:
        return NO_WHITE_CELL
    if not prediction_set:
        return "no stage fits with the required confidence"
    if len(prediction_set) == 1:  # not referred by the set rule; the graph said refer all the same
        return "referred by the model"
    names = list(prediction_set)
    return "could be " + ", ".join(names[:-1]) + " or " + names[-1]


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the class, every class's confidence, the version that answered, and the referral.

    `refer` and its fields are None for a model exported without them (no calibration outputs).
    """

    label: str
    confidences: dict[str, float]
    model_version: int | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None
    prediction_set: tuple[str, ...] | None = None  # class names, in class order
    refer: bool | None = None
    leukocyte_in_view: bool | None = None  # None: a model exported without the leukocyte check

    @property
    def reason(self) -> str | None:
        """Why the image is referred (None when it is not, or the model cannot say)."""
        if not self.refer:
            return None
        return refer_reason(
            self.in_distribution is not False, self.prediction_set or (), self.leukocyte_in_view is not False
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "confidences": self.confidences,
            "model_version": self.model_version,
        }
        if self.refer is not None:
            out.update(
                ood_score=self.ood_score,
                in_distribution=self.in_distribution,
                prediction_set=list(self.prediction_set or ()),
                refer=self.refer,
                reason=self.reason,
            )
            if self.leukocyte_in_view is not None:
                out["leukocyte_in_view"] = self.leukocyte_in_view
        return out


def _refer_outputs(response: Any, count: int) -> list[dict[str, Any]]:
    """Per image, the referral fields of a PredictResponse; empty dicts when the model has none of them."""
    import numpy as np
    from tensorflow.python.framework import tensor_util

    if not all(name in response.outputs for name in REFER_OUTPUTS):
        return [{} for _ in range(count)]
    values = {name: np.asarray(tensor_util.MakeNdarray(response.outputs[name])) for name in REFER_OUTPUTS}
    if values["prediction_set"].shape != (count, domain.NUM_CLASSES) or any(
        values[name].shape != (count,) for name in ("ood_score", "in_distribution", "refer")
    ):
        raise ServingError(
            "INTERNAL",
            "the referral outputs do not have one value (one row) per image: "
            + ", ".join(f"{k} {v.shape}" for k, v in values.items()),
        )
    in_view = None
    if LEUKOCYTE_OUTPUT in response.outputs:
        in_view = np.asarray(tensor_util.MakeNdarray(response.outputs[LEUKOCYTE_OUTPUT]))
        if in_view.shape != (count,):
            raise ServingError("INTERNAL", f"{LEUKOCYTE_OUTPUT} has shape {in_view.shape}, not one value per image")
    return [
        {
            "ood_score": float(values["ood_score"][i]),
            "in_distribution": bool(values["in_distribution"][i]),
            "prediction_set": tuple(n for n, inside in zip(domain.CLASS_NAMES, values["prediction_set"][i]) if inside),
            "refer": bool(values["refer"][i]),
            **({} if in_view is None else {"leukocyte_in_view": bool(in_view[i])}),
        }
        for i in range(count)
    ]


def is_tiff(data: bytes) -> bool:
    return data[:4] in _TIFF


def prepare_image(data: bytes) -> bytes:
    """Bytes the served graph can decode: TIFF (and other Pillow-only formats) become PNG, the rest is unchanged."""
    if not data:
        raise ValueError("empty image")
    if data.startswith(_TF_DECODABLE) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return data
    from PIL import Image

    rgb = domain.load_rgb(data)  # raises ImageDecodeError naming the problem when Pillow cannot read it either
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def backoff_delays(retries: int, initial_s: float, max_s: float, jitter: bool = True) -> list[float]:
    """Delays before each retry: doubling from `initial_s`, capped at `max_s`, jittered down by up to half."""
    delays = [min(max_s, initial_s * (2**i)) for i in range(retries)]
    return [random.uniform(0.5 * d, d) for d in delays] if jitter else delays


@dataclass
class ServingClient:
    """gRPC client for one served model; use as a context manager or call `close()`."""

    target: str = DEFAULT_TARGET
    model_name: str = settings.SERVED_MODEL_NAME
    deadline_s: float = 10.0  # per call, retries included
    retries: int = 4  # extra attempts on UNAVAILABLE
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    root_cert: Path | None = None  # PEM root certificate: TLS when set
    client_cert: Path | None = None  # PEM certificate and key for mutual TLS
    client_key: Path | None = None
    _channel: Any = field(default=None, init=False, repr=False)
    _stubs: dict = field(default_factory=dict, init=False, repr=False)

    # ------------------------------------------------------------------ connection

    def _open(self) -> Any:
        if self._channel is None:
            import grpc

            options = [
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ]
            if self.root_cert:
                key = Path(self.client_key).read_bytes() if self.client_key else None
                cert = Path(self.client_cert).read_bytes() if self.client_cert else None
                creds = grpc.ssl_channel_credentials(Path(self.root_cert).read_bytes(), key, cert)
                self._channel = grpc.secure_channel(self.target, creds, options=options)
            else:
                self._channel = grpc.insecure_channel(self.target, options=options)
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stubs.clear()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prediction_stub(self) -> Any:
        if "prediction" not in self._stubs:
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            self._stubs["prediction"] = prediction_service_pb2_grpc.PredictionServiceStub(self._open())
        return self._stubs["prediction"]

    def _model_stub(self) -> Any:
        if "model" not in self._stubs:
            from tensorflow_serving.apis import model_service_pb2_grpc

            self._stubs["model"] = model_service_pb2_grpc.ModelServiceStub(self._open())
        return self._stubs["model"]

    def call(self, method: Callable[..., Any], request: Any, deadline_s: float | None = None) -> Any:
        """Run one unary RPC within the deadline, retrying UNAVAILABLE with bounded exponential backoff."""
        import grpc

        budget = self.deadline_s if deadline_s is None else deadline_s
        end = time.monotonic() + budget
        delays = backoff_delays(self.retries, self.initial_backoff_s, self.max_backoff_s)
        for attempt in range(self.retries + 1):
            remaining = end - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise ServingError(code.name, details) from None
                delay = delays[attempt] if attempt < len(delays) else None
                if delay is None or time.monotonic() + delay >= end:
                    raise ServerUnavailable(
                        "UNAVAILABLE",
                        f"cannot reach TensorFlow Serving at {self.target} after {attempt + 1} attempt(s): {details}",
                    ) from None
                log.warning("UNAVAILABLE from %s (attempt %d), retrying in %.2fs", self.target, attempt + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    # ------------------------------------------------------------------ requests

    def _model_spec(self, spec: Any, label: str | None, version: int | None, signature: str | None) -> None:
        if label is not None and version is not None:
            raise ValueError("give a version label or a version, not both")
        spec.name = self.model_name
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        if signature is not None:
            spec.signature_name = signature

    def predict_raw(
        self,
        images: Sequence[bytes],
        label: str | None = None,
        version: int | None = None,
        signature: str = DEFAULT_SIGNATURE,
        deadline_s: float | None = None,
    ) -> Any:
        """The PredictResponse for already-encoded image bytes (no conversion)."""
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, label, version, signature)
        request.inputs[INPUT_KEY].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(images))]
                ),
                string_val=list(images),
            )
        )
        return self.call(self._prediction_stub().Predict, request, deadline_s)

    def predict(
        self,
        images: Sequence[bytes],
        label: str | None = None,
        version: int | None = None,
        deadline_s: float | None = None,
    ) -> list[Prediction]:
        """Classify encoded images (any format Pillow reads; TIFF converted to PNG first)."""
        import numpy as np
        from tensorflow.python.framework import tensor_util  # proto -> ndarray without building a graph

        response = self.predict_raw([prepare_image(b) for b in images], label, version, DEFAULT_SIGNATURE, deadline_s)
        probs = np.asarray(tensor_util.MakeNdarray(response.outputs["probabilities"]), dtype=float)
        served = response.model_spec.version.value if response.model_spec.HasField("version") else None
        if probs.shape != (len(images), domain.NUM_CLASSES):
            raise ServingError(
                "INTERNAL", f"expected probabilities of shape {(len(images), domain.NUM_CLASSES)}, got {probs.shape}"
            )
        refer = _refer_outputs(response, len(images))
        return [
            Prediction(
                label=domain.CLASS_NAMES[int(row.argmax())],
                confidences={name: float(p) for name, p in zip(domain.CLASS_NAMES, row)},
                model_version=served,
                **refer[i],
            )
            for i, row in enumerate(probs)
        ]

    def classify(
        self,
        images: Sequence[bytes],
        label: str | None = None,
        version: int | None = None,
        signature: str = "classify",
        deadline_s: float | None = None,
    ) -> list[dict[str, float]]:
        """The Classify API over tf.Examples (`image/encoded`): per image, class -> score."""
        from tensorflow.core.example import example_pb2, feature_pb2
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, label, version, signature)
        for data in images:
            example = example_pb2.Example()
            example.features.feature["image/encoded"].CopyFrom(
                feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[prepare_image(data)]))
            )
            request.input.example_list.examples.append(example)
        response = self.call(self._prediction_stub().Classify, request, deadline_s)
        return [{c.label: float(c.score) for c in result.classes} for result in response.result.classifications]

    def status(
        self, label: str | None = None, version: int | None = None, deadline_s: float | None = None
    ) -> list[dict]:
        """GetModelStatus: per version, its state (AVAILABLE, LOADING, ...) and error, as TF Serving reports them."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, label, version, None)
        response = self.call(self._model_stub().GetModelStatus, request, deadline_s)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            {
                "version": int(v.version),
                "state": state_name(v.state),
                "error_code": int(v.status.error_code),
                "error_message": v.status.error_message,
            }
            for v in response.model_version_status
        ]

    def metadata(self, label: str | None = None, version: int | None = None, deadline_s: float | None = None) -> dict:
        """GetModelMetadata: the served version and each signature's input and output names, dtypes and shapes."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, label, version, None)
        response = self.call(self._prediction_stub().GetModelMetadata, request, deadline_s)
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)

        def tensors(infos: Any) -> dict:
            return {
                key: {
                    "dtype": types_pb2.DataType.Name(info.dtype),
                    "shape": None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim],
                }
                for key, info in infos.items()
            }

        signatures = {
            name: {"method_name": sig.method_name, "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
            for name, sig in sigmap.signature_def.items()
        }
        return {
            "model": response.model_spec.name,
            "version": int(response.model_spec.version.value),
            "signatures": signatures,
        }
