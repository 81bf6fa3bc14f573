"""The three model builders: one function from one ModelConfig to a keras.Model.

Every model takes float32 [size, size, 3] in [0, 1] (the domain contract), applies the
configured brightness adjustment and its own normalisation inside the graph, runs a
backbone whose last 4-D output is the layer named `feature_map` (Grad-CAM hooks there),
then global average pooling, dropout and a float32 softmax layer named `probabilities`.
With `views` > 1 the backbone sees each image in that many orientations (stacked on the batch
axis, identity first) and the pooled features are averaged over them before the head.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from components import domain, settings
from components.settings import ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

BASE_LAYER_NAME = "base"
FEATURE_LAYER = "feature_map"
# A mid-level feature map (texture, stain and cell-edge detectors, before class evidence): its pooled
# activations carry the out-of-distribution score (components/train/calibration.py). Measured on the
# shared external smears, the last feature map's pooled features detect 15-20% of them at a 2% in-
# distribution referral rate, the mid-level block's 100% (docs/results.md, "Knows when it does not know").
OOD_SOURCE_LAYERS = {"mobilenetv2": "block_6_expand_relu", "resnet50": "conv3_block4_out", "cnn": "b1_out"}
OUTPUT_LAYER = "probabilities"
# Sizes for which Keras publishes MobileNetV2 ImageNet weights (it picks the file by input size).
MOBILENET_SIZES = (96, 128, 160, 192, 224)
# Few steps per epoch on this data (~70): moving statistics must settle within a few epochs.
BN_MOMENTUM = 0.9
RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The symmetries of the square, in the order `ModelConfig.views` takes them: a smear has no canonical
# orientation, so every one is the same smear; the model averages its pooled features over the first few.
VIEW_ORDER = (
    "identity",
    "flip_left_right",
    "flip_up_down",
    "rotate_90",
    "rotate_180",
    "rotate_270",
    "transpose",
    "anti_transpose",
)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but could not be found or downloaded."""


def mobilenet_notop_name(size: int) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"


def keras_cache_dir() -> Path:
    """Where `keras.utils.get_file(..., cache_subdir="models")` looks: $KERAS_HOME/models (default ~/.keras/models)."""
    try:
        from keras.src.backend.config import keras_home

        base = keras_home()
    except ImportError:  # pragma: no cover - private API moved
        base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    base = os.path.expanduser(base)
    if os.path.isdir(base) and not os.access(base, os.W_OK):  # keras falls back to /tmp/.keras then
        base = "/tmp/.keras"
    return Path(base) / "models"


class GraphLayers(NamedTuple):
    """The classes of the project's own graph layers (see graph_layers)."""

    brightness: type
    normalize: type
    views: type
    combine_views: type


_LAYER_CACHE: GraphLayers | None = None


def graph_layers() -> GraphLayers:
    """The project's own graph layers (Brightness, Normalize, Views, CombineViews), defined lazily so importing
    this module does not import Keras. build_model reads them from here at call time, so an experiment may
    swap `graph_layers` for a variant of one layer."""
    global _LAYER_CACHE
    if _LAYER_CACHE is not None:
        return _LAYER_CACHE
    import keras

    @keras.saving.register_keras_serializable(package="leukoflow")
    class Brightness(keras.layers.Layer):
        """domain.tf_adjust_brightness inside the model, so serving applies it too."""

        def __init__(self, method: str = "none", **kwargs):
            super().__init__(**kwargs)
            if method not in domain.BRIGHTNESS_METHODS:
                raise ValueError(f"unknown brightness method {method!r}; expected one of {domain.BRIGHTNESS_METHODS}")
            self.method = method

        def call(self, inputs):
            return domain.tf_adjust_brightness(inputs, self.method)

        def get_config(self):
            return {**super().get_config(), "method": self.method}

    @keras.saving.register_keras_serializable(package="leukoflow")
    class Normalize(keras.layers.Layer):
        """The backbone's own input normalisation from [0, 1] pixels: 'tf' -> [-1, 1], 'caffe' -> BGR minus ImageNet mean."""

        def __init__(self, mode: str = "tf", **kwargs):
            super().__init__(**kwargs)
            if mode not in ("tf", "caffe"):
                raise ValueError(f"unknown normalisation {mode!r}")
            self.mode = mode

        def call(self, inputs):
            from keras import ops

            if self.mode == "tf":  # == mobilenet_v2.preprocess_input(x * 255)
                return inputs * 2.0 - 1.0
            # == resnet50.preprocess_input(x * 255): RGB -> BGR, subtract the ImageNet channel means.
            bgr = ops.flip(inputs * 255.0, axis=-1)
            return bgr - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=inputs.dtype)

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    @keras.saving.register_keras_serializable(package="leukoflow")
    class Views(keras.layers.Layer):
        """Stack the first `count` symmetries of the square (VIEW_ORDER) of each image along the batch axis."""

        def __init__(self, count: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.count = settings.check_views(count)  # also here: a model.keras edited by hand

        def call(self, inputs):
            from keras import ops

            def transposed(x):  # square images: rotations are a transpose and a flip
                return ops.transpose(x, (0, 2, 1, 3))

            transforms = {
                "identity": lambda x: x,
                "flip_left_right": lambda x: ops.flip(x, axis=2),
                "flip_up_down": lambda x: ops.flip(x, axis=1),
                "rotate_90": lambda x: ops.flip(transposed(x), axis=1),
                "rotate_180": lambda x: ops.flip(x, axis=(1, 2)),
                "rotate_270": lambda x: ops.flip(transposed(x), axis=2),
                "transpose": transposed,
                "anti_transpose": lambda x: ops.flip(transposed(x), axis=(1, 2)),
            }
            return ops.concatenate([transforms[name](inputs) for name in VIEW_ORDER[: self.count]], axis=0)

        def get_config(self):
            return {**super().get_config(), "count": self.count}

    @keras.saving.register_keras_serializable(package="leukoflow")
    class CombineViews(keras.layers.Layer):
        """[views * B, ...] stacked by Views -> [B, ...]: their mean, or the identity view alone ("first")."""

        def __init__(self, count: int = 1, how: str = "mean", **kwargs):
            super().__init__(**kwargs)
            if how not in ("mean", "first"):
                raise ValueError(f"unknown view combination {how!r}; expected mean or first")
            self.count, self.how = count, how

        def call(self, inputs):
            from keras import ops

            views = ops.reshape(inputs, (self.count, -1, *inputs.shape[1:]))
            return ops.mean(views, axis=0) if self.how == "mean" else views[0]

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "count": self.count, "how": self.how}

    _LAYER_CACHE = GraphLayers(Brightness, Normalize, Views, CombineViews)
    return _LAYER_CACHE


def resolve_weights(config: ModelConfig) -> tuple[str | None, str]:
    """(value for keras.applications `weights=`, what is loaded in words) for a config.

    "imagenet" is looked up where Keras's standard loading path looks; for MobileNetV2 at a
    size Keras has no file for, the 224 no-top file is loaded by path (conv weights do not
    depend on the input size). A missing file raises WeightsNotFoundError naming the path.
    """
    weights = config.weights
    if config.name == "cnn" or weights in ("none", "", None):
        return None, "random init"
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {path} for {config.name} does not exist; pass an existing .h5/.weights.h5 file, "
                "--weights imagenet (Keras cache) or --weights none (random init)"
            )
        return str(path.resolve()), str(path.resolve())
    cache = keras_cache_dir()
    if config.name == "mobilenetv2":
        if config.image_size in MOBILENET_SIZES:
            wanted = cache / mobilenet_notop_name(config.image_size)
            if wanted.is_file():
                return "imagenet", str(wanted)
        fallback = cache / mobilenet_notop_name(224)
        if fallback.is_file():
            return str(fallback), str(fallback)
        wanted = cache / mobilenet_notop_name(config.image_size if config.image_size in MOBILENET_SIZES else 224)
    elif config.name == "resnet50":
        wanted = cache / RESNET50_NOTOP
        if wanted.is_file():
            return "imagenet", str(wanted)
    else:  # a new model needs its own rule here; never fall back to another model's file
        raise ValueError(
            f"no ImageNet weights rule for model {config.name!r} (rules exist for resnet50 and mobilenetv2); "
            "add one in components/train/models.resolve_weights, or pass --weights none or a weights file"
        )
    return "imagenet", f"download:{wanted}"  # not cached: let Keras try its download, caught below


def _missing_message(config: ModelConfig, wanted: str, error: Exception) -> str:
    return (
        f"ImageNet weights for {config.name} not found: Keras looked for {wanted} "
        f"(its cache, $KERAS_HOME/models) and the download failed ({type(error).__name__}: {error}). "
        f"Supply them by copying the no-top .h5 file there (`make weights` copies ../shared/weights/keras/*.h5 "
        f"into $KERAS_HOME/models), by passing a file path as weights (--weights /path/file.h5), or train "
        f"from random init with --weights none."
    )


def _backbone(config: ModelConfig, shape: tuple[int, int, int]) -> tuple[keras.Model, str, str]:
    """(base model, normalisation mode, weights used) for a transfer model."""
    import keras

    arg, used = resolve_weights(config)
    factory = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}[config.name]
    mode = "caffe" if config.name == "resnet50" else "tf"
    try:
        base = factory(include_top=False, weights=arg, input_shape=shape)
    except Exception as exc:  # noqa: BLE001 - download/IO errors come in many types
        if used.startswith("download:"):
            raise WeightsNotFoundError(_missing_message(config, used.removeprefix("download:"), exc)) from exc
        raise
    if used.startswith("download:"):
        used = used.removeprefix("download:")
    # The same layers, with the mid-level map as a second output (nested layers are not reachable from outside).
    trunk = keras.Model(
        base.input, [base.get_layer(OOD_SOURCE_LAYERS[config.name]).output, base.output], name=BASE_LAYER_NAME
    )
    return trunk, mode, used


def _cnn_backbone(x, config: ModelConfig):
    """A compact CNN: a strided stem, then separable-conv blocks with BatchNorm and pooling."""
    import keras
    from keras import layers

    reg = keras.regularizers.l2(1e-5)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, kernel_regularizer=reg, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    side = (config.image_size + 1) // 2
    mid = None
    for i, filters in enumerate((48, 96, 160, 256)):
        # Downsample only while the map is larger than 4x4: tiny inputs keep enough positions for BatchNorm.
        stride = 2 if side > 4 else 1
        side = (side + stride - 1) // stride
        shortcut = layers.Conv2D(filters, 1, strides=stride, padding="same", use_bias=False, name=f"b{i}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{i}_proj_bn")(shortcut)
        for j in range(2):
            x = layers.SeparableConv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                depthwise_regularizer=reg,
                pointwise_regularizer=reg,
                name=f"b{i}_sep{j}",
            )(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{i}_bn{j}")(x)
            if j == 0:
                x = layers.Activation("relu", name=f"b{i}_relu{j}")(x)
        x = layers.MaxPooling2D(3, strides=stride, padding="same", name=f"b{i}_pool")(x)
        x = layers.Add(name=f"b{i}_add")([x, shortcut])  # residual: trains faster and deeper on few epochs
        x = layers.Activation("relu", name=f"b{i}_out")(x)
        if f"b{i}_out" == OOD_SOURCE_LAYERS["cnn"]:
            mid = x
    return mid, x


def build_model(config: ModelConfig) -> keras.Model:
    """Build the model `config.name` (cnn, resnet50, mobilenetv2); `model.weights_used` says what was loaded."""
    import keras
    from keras import layers

    Brightness, Normalize, Views, CombineViews = graph_layers()
    size = config.image_size
    inputs = keras.Input((size, size, domain.CHANNELS), dtype="float32", name="pixels")
    x = Brightness(config.brightness, name="brightness")(inputs)
    if config.name == "cnn":
        x = Views(config.views, name="views")(Normalize("tf", name="normalize")(x))
        mid, x = _cnn_backbone(x, config)
        used = "random init"
    elif config.name in ("resnet50", "mobilenetv2"):
        base, mode, used = _backbone(config, (size, size, domain.CHANNELS))
        # Pretrained (or cached-feature) bases start frozen: phase 1 trains the head, set_fine_tune() the top.
        # A random-init base has nothing to preserve, so it trains from the first step.
        base.trainable = used == "random init" and not config.cache_features
        x = Views(config.views, name="views")(Normalize(mode, name="normalize")(x))
        mid, x = base(x, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    else:
        raise ValueError(f"unknown model {config.name!r}; expected one of cnn, resnet50, mobilenetv2")
    del mid  # reached again by name in calibration_features_model()
    x = layers.Identity(name=FEATURE_LAYER)(x)
    # One pooled feature vector per view, averaged: the head's logits are then the mean of the views' logits
    # (the head is linear), and everything fitted on the pooled features (calibration) sees the averaged ones.
    x = CombineViews(config.views, name="combine_views")(layers.GlobalAveragePooling2D(name="gap")(x))
    x = layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    outputs = layers.Dense(domain.NUM_CLASSES, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)
    model = keras.Model(inputs, outputs, name=config.name)
    model.weights_used = used
    return model


def calibration_features_model(model: keras.Model) -> keras.Model:
    """(pooled head features, pooled mid-level features): what the classifier and the OOD score see."""
    import keras

    base = base_layer(model)
    # The outer call of the trunk (its own `.output` is the inner graph's tensor).
    mid = (
        base._inbound_nodes[-1].output_tensors[0]
        if base is not None
        else model.get_layer(OOD_SOURCE_LAYERS[model.name]).output
    )
    pooled_mid = keras.layers.GlobalAveragePooling2D(name="ood_gap")(mid)
    count = views(model)
    if count > 1:  # the OOD statistics are fitted on single upright images: score the identity view alone
        pooled_mid = graph_layers().combine_views(count, how="first", name="ood_identity_view")(pooled_mid)
    head = model.get_layer("combine_views" if _has_layer(model, "combine_views") else "gap")  # older models: none
    return keras.Model(model.input, [head.output, pooled_mid])


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def views(model: keras.Model) -> int:
    """How many views of each image the model averages (1 for models built before views existed)."""
    return model.get_layer("views").count if _has_layer(model, "views") else 1


def base_layer(model: keras.Model) -> keras.Model | None:
    try:
        return model.get_layer(BASE_LAYER_NAME)
    except ValueError:
        return None


def set_fine_tune(model: keras.Model, layers_to_unfreeze: int) -> int:
    """Unfreeze the top `layers_to_unfreeze` layers of the base (BatchNorm stays frozen); returns trainable layer count."""
    import keras

    base = base_layer(model)
    if base is None or layers_to_unfreeze <= 0:
        return 0
    base.trainable = True
    cut = max(0, len(base.layers) - layers_to_unfreeze)
    count = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        count += int(layer.trainable and bool(layer.weights))
    return count


def gradcam_model(model: keras.Model) -> keras.Model:
    """(feature_map, probabilities) from the same inputs, for Grad-CAM."""
    import keras

    return keras.Model(model.input, [model.get_layer(FEATURE_LAYER).output, model.output])


def load_keras_model(path: str | Path) -> keras.Model:
    """Load a saved model.keras (registers the custom layers first)."""
    import keras

    graph_layers()
    return keras.saving.load_model(str(path), compile=False)
