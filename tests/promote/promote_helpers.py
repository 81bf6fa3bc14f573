"""Test helpers: a tiny SavedModel with the serving contract, candidate evaluation dirs, a split dir."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

SIZE = 16
# One colour per class, so a fixed linear map of colour means classifies the test images exactly.
CLASS_COLOURS = {0: (230, 20, 20), 1: (20, 230, 20), 2: (20, 20, 230), 3: (128, 128, 128)}
GOOD_W = np.array([[10, 0, 0, 5], [0, 10, 0, 5], [0, 0, 10, 5]], np.float32)


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def class_image(label: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(CLASS_COLOURS[label], np.int16)
    return np.clip(base + rng.integers(-10, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def export_tiny(export_dir: str | Path, weights: np.ndarray = GOOD_W, broken: bool = False, warmup: bool = True,
                bias: float = 0.0) -> Path:
    """serving_default (images -> probabilities, label), classify, warmup file; `broken`: probs sum to 1.5."""
    import tensorflow as tf

    from components import domain

    export_dir = Path(export_dir)
    names = tf.constant(list(domain.CLASS_NAMES))

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.asarray(weights, np.float32))
            self.b = tf.Variable(np.array([bias, 0, 0, 0], np.float32))

        def _probs(self, images):
            pixels = tf.map_fn(lambda b: domain.tf_preprocess_encoded(b, size=SIZE), images,
                               fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
            probs = tf.nn.softmax(tf.reduce_mean(pixels, axis=[1, 2]) @ self.w + self.b)
            return probs * 1.5 if broken else probs

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serving_default(self, images):
            probs = self._probs(images)
            return {"probabilities": probs, "label": tf.gather(names, tf.argmax(probs, axis=1))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            parsed = tf.io.parse_example(inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            scores = self._probs(parsed["image/encoded"])
            return {"classes": tf.tile(names[None, :], [tf.shape(scores)[0], 1]), "scores": scores}

    module = Tiny()
    tf.saved_model.save(module, str(export_dir),
                        signatures={"serving_default": module.serving_default, "classify": module.classify})
    extra = export_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "leukoflow.json").write_text(json.dumps({"model": "tiny", "image_size": SIZE, "low_confidence": 0.55}))
    if warmup:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = "leukemia"
        req.model_spec.signature_name = "serving_default"
        req.inputs["images"].CopyFrom(tf.make_tensor_proto([png(class_image(0))], dtype=tf.string))
        with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as w:
            w.write(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
    return export_dir


def make_split(split_dir: Path, per_class: int = 3, seed: int = 0) -> Path:
    """split.csv plus test TFRecord shards of class-coloured PNGs."""
    from components import records

    split_dir.mkdir(parents=True, exist_ok=True)
    recs, rows = [], ["id,path,label,group_id,split"]
    for label in range(4):
        for i in range(per_class):
            rgb = class_image(label, seed * 1000 + label * 100 + i)
            rid = f"{label}-{i}-{seed}"
            recs.append(records.make_example(rid, f"/nonexistent/{rid}.png", label, png(rgb), rgb))
            rows.append(f"{rid},/nonexistent/{rid}.png,{label},{rid},test")
    records.write_shards(recs, split_dir / "test", 1)
    (split_dir / "split.csv").write_text("\n".join(rows) + "\n")
    return split_dir


PAPER = {  # the paper's figures (macro-F1, accuracy, params); recall/robustness/latency illustrative
    "resnet50": dict(macro_f1=0.97, accuracy=0.9709, params=25_600_000, recall=0.95, robust=0.80, latency=60.0),
    "mobilenetv2": dict(macro_f1=0.96, accuracy=0.9663, params=3_400_000, recall=0.93, robust=0.78, latency=15.0),
    "cnn": dict(macro_f1=0.72, accuracy=0.7975, params=1_200_000, recall=0.55, robust=0.60, latency=5.0),
}


def metrics(model: str, macro_f1: float, accuracy: float, params: int, recall: float | dict = 0.9,
            robust: float | None = 0.8, latency: float | None = 10.0, saved_model: str | None = None) -> dict:
    from components import domain

    recalls = recall if isinstance(recall, dict) else {c: recall for c in domain.CLASS_NAMES}
    m = {"model": model, "accuracy": accuracy, "accuracy_ci": [accuracy - 0.01, min(1.0, accuracy + 0.01)],
         "macro_f1": macro_f1, "macro_f1_ci": [macro_f1 - 0.01, min(1.0, macro_f1 + 0.01)], "weighted_f1": macro_f1,
         "per_class": {c: {"precision": 0.9, "recall": r, "f1": 0.9, "support": 12} for c, r in recalls.items()},
         "confusion_matrix": [[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3]],
         "class_names": list(domain.CLASS_NAMES), "params": params, "size_bytes": params * 4,
         "latency_ms": {"batch1_p50": latency, "batch1_p95": latency} if latency is not None else {},
         "throughput_b32": 100.0,
         "robustness": {"brightness+15%": robust, "grayscale": robust} if robust is not None else {},
         "robustness_worst": robust, "shortcut_baseline": {"accuracy": 0.9, "macro_f1": 0.88},
         "saved_model": saved_model, "test_images": 12}
    return m


def make_candidate(root: Path, model: str, saved_model: Path, **kw) -> Path:
    """An evaluation output dir (metrics.json) whose saved_model is a copy-free reference to `saved_model`."""
    d = root / f"eval-{model}"
    d.mkdir(parents=True, exist_ok=True)
    m = metrics(model, saved_model=str(saved_model), **kw)
    (d / "metrics.json").write_text(json.dumps(m))
    return d
