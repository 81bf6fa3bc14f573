"""Export a trained Keras model as the serving SavedModel (docs/architecture.md, "The exported SavedModel").

Signatures: `serving_default` (encoded bytes), `predict_pixels` (float pixels) and `classify`
(tf.Example, TF Serving's Classify API). The two predict signatures also return the monitoring
features (components/image_features.py, one `feature_<name>` output each) for the request log.
With a fitted calibration (components/train/calibration.py) they return calibrated
`probabilities` and, per image, `ood_score`, `in_distribution`, `prediction_set`, `leukocyte_fraction`,
`leukocyte_in_view` and `refer` (out of distribution, not exactly one stage in the set, or no white cell in
view: components/leukocytes.py, when settings.REFER_WITHOUT_LEUKOCYTE);
`classify` returns the calibrated scores. Decoding and resizing use the domain module's graph
functions, so serving cannot drift from training. `assets.extra/` holds TF Serving warmup
requests, `leukoflow.json` (components/model_metadata.py) and a copy of the Keras model (for Grad-CAM
on the serving page).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components import domain, model_metadata, settings

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from components.train.calibration import Calibration

CLASSIFY_METHOD = "tensorflow/serving/classify"
WARMUP_FILE = "tf_serving_warmup_requests"
SIGNATURES = ("serving_default", "predict_pixels", "classify")


def _set_method_name(export_dir: Path, signature: str, method: str) -> None:
    """tf.saved_model.save writes every signature as 'predict'; TF Serving's Classify API needs 'classify'."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = export_dir / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb_path.read_bytes())
    for meta_graph in proto.meta_graphs:
        if signature in meta_graph.signature_def:
            meta_graph.signature_def[signature].method_name = method
    pb_path.write_bytes(proto.SerializeToString())


def write_warmup(path: Path, images: Sequence[bytes], model_name: str = settings.SERVED_MODEL_NAME) -> int:
    """TF Serving warmup file: TFRecord of PredictionLog, one serving_default request per image."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for encoded in images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
            )
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([encoded], dtype=tf.string, shape=[1]))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
            count += 1
    return count


def export_saved_model(
    model: keras.Model,
    export_dir: str | Path,
    *,
    model_name: str,
    image_size: int,
    brightness: str,
    warmup_images: Sequence[bytes] = (),
    keras_path: str | Path | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write the serving SavedModel to `export_dir` (via a temporary sibling, then renamed)."""
    import keras
    import tensorflow as tf

    from components import leukocytes
    from components.image_features import FEATURE_NAMES, feature_outputs, tf_batch_features, tf_image_features

    export_dir = Path(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    names = tf.constant(domain.CLASS_NAMES)
    size = int(image_size)

    from components.train import models

    if calibration is not None:
        features_model = models.calibration_features_model(model)
        kernel, bias = (tf.constant(w, tf.float32) for w in model.get_layer(models.OUTPUT_LAYER).get_weights())
        whitening = tf.constant(calibration.whitening, tf.float32)
        centres = tf.constant(calibration.class_means @ calibration.whitening, tf.float32)

    def outputs(pixels):
        if calibration is None:  # probabilities as trained
            probabilities = tf.cast(model(pixels, training=False), tf.float32)
            return {"probabilities": probabilities, "label": tf.gather(names, tf.argmax(probabilities, axis=1))}
        head, mid = features_model(pixels, training=False)
        logits = tf.matmul(tf.cast(head, tf.float32), kernel) + bias
        probabilities = tf.nn.softmax(logits / calibration.temperature)
        projected = tf.matmul(tf.cast(mid, tf.float32), whitening)
        ood_score = tf.reduce_min(tf.reduce_sum(tf.square(projected[:, None, :] - centres[None]), axis=-1), axis=1)
        in_distribution = ood_score <= calibration.ood_threshold
        prediction_set = probabilities >= 1.0 - calibration.conformal_quantile
        single = tf.equal(tf.reduce_sum(tf.cast(prediction_set, tf.int32), axis=1), 1)
        # No stage of ALL can be read from a smear without a white cell: the graph refers it, whatever it scores.
        leukocyte_fraction = leukocytes.tf_leukocyte_fraction(pixels)
        in_view = leukocyte_fraction >= leukocytes.MIN_LEUKOCYTE_FRACTION
        refer = tf.logical_or(tf.logical_not(in_distribution), tf.logical_not(single))
        if settings.REFER_WITHOUT_LEUKOCYTE:
            refer = tf.logical_or(refer, tf.logical_not(in_view))
        return {
            "probabilities": probabilities,
            "label": tf.gather(names, tf.argmax(probabilities, axis=1)),
            "ood_score": ood_score,
            "in_distribution": in_distribution,
            "prediction_set": prediction_set,
            "leukocyte_fraction": leukocyte_fraction,
            "leukocyte_in_view": in_view,
            "refer": refer,
        }

    def decode_batch(images):
        # Brightness is applied by the model's own layer, so decode + resize only here. The monitoring
        # features come from the full-size decoded image, before the resize, as the drift reference's do.
        def one(encoded):
            image = domain.tf_decode(encoded)
            return domain.tf_adjust_brightness(domain.tf_resize(image, size), "none"), tf_image_features(image)

        return tf.map_fn(
            one,
            images,
            fn_output_signature=(
                tf.TensorSpec([size, size, domain.CHANNELS], tf.float32),
                tf.TensorSpec([len(FEATURE_NAMES)], tf.float32),
            ),
        )

    def serve(images):
        pixels, features = decode_batch(images)
        result = outputs(pixels)
        result.update(feature_outputs(features))
        return result

    def predict_pixels(pixels):
        result = outputs(pixels)
        result.update(feature_outputs(tf_batch_features(pixels)))
        return result

    def classify(inputs):
        # TF Serving's Classify API takes one or two outputs (classes, scores): no monitoring outputs here.
        parsed = tf.io.parse_example(inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        probabilities = outputs(decode_batch(parsed["image/encoded"])[0])["probabilities"]
        classes = tf.tile(names[None, :], [tf.shape(probabilities)[0], 1])
        return {"classes": classes, "scores": probabilities}

    archive = keras.export.ExportArchive()
    archive.track(model)
    if calibration is not None:
        archive.track(features_model)
    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(
        "predict_pixels",
        predict_pixels,
        input_signature=[tf.TensorSpec([None, size, size, domain.CHANNELS], tf.float32, name="pixels")],
    )
    archive.add_endpoint("classify", classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=export_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the server may run as another user
    try:
        archive.write_out(str(tmp), verbose=False)
        _set_method_name(tmp, "classify", CLASSIFY_METHOD)
        extra = tmp / model_metadata.ASSETS_EXTRA
        extra.mkdir(exist_ok=True)
        write_warmup(extra / WARMUP_FILE, list(warmup_images))
        model_metadata.write(
            tmp,
            model_metadata.ModelMetadata(
                model=model_name,
                image_size=size,
                brightness=brightness,
                class_names=domain.CLASS_NAMES,
                low_confidence_threshold=settings.LOW_CONFIDENCE_THRESHOLD,
                signatures=SIGNATURES,
                keras_model="model.keras" if keras_path else None,
                **(
                    {}
                    if calibration is None
                    else {
                        "temperature": calibration.temperature,
                        "ood_threshold": calibration.ood_threshold,
                        "ood_layer": models.OOD_SOURCE_LAYERS.get(model_name),
                        "ood_val_referral_rate": calibration.ood_referral_rate,
                        "conformal_quantile": calibration.conformal_quantile,
                        "conformal_coverage": calibration.coverage,
                    }
                ),
            ),
        )
        if keras_path:
            shutil.copy2(keras_path, extra / "model.keras")
        if export_dir.exists():
            shutil.rmtree(export_dir)
        tmp.rename(export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir


def dir_size(path: str | Path) -> int:
    """Bytes on disk of every file under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
