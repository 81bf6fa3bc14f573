"""A tiny exported model with the serving contract of docs/architecture.md, for the serving tests.

Not a trained model: a fixed linear map of per-image colour means, so outputs are deterministic and
two versions (different `shift`) give different probabilities. Export is the same shape as the
trainer's: serving_default, predict_pixels, classify (method tensorflow/serving/classify), warmup file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

SIZE = 32


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, mode: str = "RGB") -> bytes:
    """RGB uint8 -> JPEG bytes (mode "CMYK" writes a CMYK JPEG)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sample_image(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A small random RGB image."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _set_classify_method(export_dir: Path) -> None:
    """tf.saved_model.save writes every signature as predict; TF Serving's Classify needs the classify method."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = export_dir / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    for graph in proto.meta_graphs:
        if "classify" in graph.signature_def:
            graph.signature_def["classify"].method_name = "tensorflow/serving/classify"
    pb.write_bytes(proto.SerializeToString())


def write_warmup(export_dir: Path, model_name: str = "leukemia", images: list[bytes] | None = None) -> Path:
    """assets.extra/tf_serving_warmup_requests: one PredictionLog with a serving_default PredictRequest."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    images = images or [encode_png(sample_image(0))]
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = "serving_default"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    path = export_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString()
        )
    return path


def export_tiny_model(
    export_dir: str | Path, shift: float = 0.0, warmup: bool = True, model_name: str = "leukemia"
) -> Path:
    """Export the tiny model to `export_dir` (a version directory such as base/leukemia/1)."""
    import tensorflow as tf

    from components import domain, image_features

    export_dir = Path(export_dir)
    class_names = tf.constant(list(domain.CLASS_NAMES))

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            w = np.array([[4.0, -2.0, 0.0, -1.0], [-1.0, 3.0, -2.0, 0.5], [-2.0, 0.0, 3.0, 1.0]], np.float32)
            self.w = tf.Variable(w)
            self.b = tf.Variable(np.array([0.0, shift, -shift, 0.0], np.float32))

        def _probs(self, pixels: tf.Tensor) -> tf.Tensor:
            feats = tf.reduce_mean(pixels, axis=[1, 2])
            return tf.nn.softmax(feats @ self.w + self.b)

        def _outputs(self, pixels: tf.Tensor, features: tf.Tensor) -> dict:
            probs = self._probs(pixels)
            # The monitoring outputs, as the trainer's export adds them (components/image_features.py).
            return {
                "probabilities": probs,
                "label": tf.gather(class_names, tf.argmax(probs, axis=1)),
                **image_features.feature_outputs(features),
            }

        def _decode(self, images: tf.Tensor) -> tf.Tensor:
            return tf.map_fn(
                lambda b: domain.tf_preprocess_encoded(b, size=SIZE),
                images,
                fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32),
            )

        def _features(self, images: tf.Tensor) -> tf.Tensor:
            return tf.map_fn(
                lambda b: image_features.tf_image_features(domain.tf_decode(b)),
                images,
                fn_output_signature=tf.TensorSpec([len(image_features.FEATURE_NAMES)], tf.float32),
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serving_default(self, images):
            return self._outputs(self._decode(images), self._features(images))

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="pixels")])
        def predict_pixels(self, pixels):
            return self._outputs(pixels, image_features.tf_batch_features(pixels))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            parsed = tf.io.parse_example(inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            scores = self._probs(self._decode(parsed["image/encoded"]))
            classes = tf.tile(class_names[None, :], [tf.shape(scores)[0], 1])
            return {"classes": classes, "scores": scores}

    module = Tiny()
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    tf.saved_model.save(
        module,
        str(tmp),
        signatures={
            "serving_default": module.serving_default,
            "predict_pixels": module.predict_pixels,
            "classify": module.classify,
        },
    )
    _set_classify_method(tmp)
    (tmp / "assets.extra").mkdir(exist_ok=True)
    (tmp / "assets.extra" / "leukoflow.json").write_text(
        json.dumps(
            {"model": "tiny", "image_size": SIZE, "class_names": list(domain.CLASS_NAMES), "low_confidence": 0.6}
        )
    )
    if warmup:
        write_warmup(tmp, model_name)
    tmp.rename(export_dir)
    return export_dir
