"""The quick CNN under another lab's light: which training change keeps it at 90% under its worst plausible perturbation.

Variants of the quick profile's CNN, each trained on the real split with a few seeds and scored
on the **validation** split (the test split plays no part in the choice) under every perturbation
of components/evaluate/robustness.py, through the Keras graph (its in-graph normalisation included):

- before: BatchNorm's precise statistics from clean training batches, no overexposure (until 2026-12-06);
- bn-augmented: the statistics from training batches augmented as the weights see them;
- overexposure: 30% of the training images also overexposed until the background clips (augment.py);
- both: the two together (the quick profile 2026-12-06);
- cosine: both, with the learning rate falling along a cosine to 5% over the 8 epochs instead of constant
  (the quick profile since 2026-12-07);
- strong overexposure: cosine, with the overexposed images' gain drawn from x1.1-1.4 instead of x1.0-1.3, so each
  of them clips (STRONG_OVEREXPOSURE);
- 10 epochs: cosine, over 10 epochs instead of 8 (about 25% more of the CNN's training time);
- saturated 1.15 / 1.3: cosine, with the in-graph background normalisation mapping the background to 1.15 (1.3)
  instead of 0.92, so a clean smear's highlights saturate as a 15% (30%) brighter lamp's do
  (domain.BACKGROUND_TARGET, read when the graph is built);
- 128 px: cosine, at a 128-px input instead of 96 (about 1.8x the pixels);
- weight EMA: cosine, validated, checkpointed and kept with an exponential moving average of the weights (momentum
  0.99, about 1.4 epochs; Keras' `use_ema` and `SwapEMAWeights`), patched into the executor here;
- label smoothing 0.1: cosine, with the targets smoothed by 0.1 (ModelConfig.label_smoothing);
- distilled: cosine, with the targets half the label and half the predictions of a teacher trained on the same
  training images (the MobileNetV2 of a pipeline run, `--teacher`), softened at temperature 2, computed once
  on the clean images (Hinton et al. 2015); the student still starts from random weights;
- lr 3e-3: cosine, from a peak rate of 3e-3 instead of 1e-3;
- level jitter: cosine, with a training-only gain (x0.85-1.15) after the graph's background normalisation and, on
  half the images, a random ceiling (0.8-1.0) the bright band clips at, so that the absolute level the
  normalisation lands on carries nothing (experiments/exposure_headroom.py: the quick CNN fails when it moves);
- clip mask: cosine, with a fourth input channel beside the normalised RGB, set where the received pixels clipped
  (every channel at 254/255 or more), so the network can tell how far more light went past the background reference;
- 'twins 1' (in the results) ran on commit a43905f: every training image beside an overexposed twin and a
  Jensen-Shannon consistency loss between their predictions; its code was reverted in the next commit.

    python -m experiments.cnn_robustness [--split DIR] [--seeds 42 43 44] [--variants before both] [--append]
        [--teacher RUN/.../mobilenetv2/keras/model.keras]   # the distilled variant's teacher

Writes experiments/results/cnn_robustness.{json,md}. About 4 minutes per training on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks import harness

RESULTS = harness.results_dir(__file__)
STRONG_OVEREXPOSURE = (1.1, 1.4)


class Variant(NamedTuple):
    clean_batchnorm: bool  # precise BatchNorm statistics from un-augmented batches
    overexposed: bool  # the quick profile's share of overexposed images (else none)
    cosine_decay: bool
    gains: tuple[float, float] | None = None  # augment.OVEREXPOSURE for this variant (None: the module's own)
    epochs: int | None = None  # None: the quick profile's
    background_target: float | None = None  # domain.BACKGROUND_TARGET for this variant (None: the module's own)
    image_size: int | None = None  # None: the quick profile's
    weight_ema: float | None = None  # the optimizer's EMA momentum (None: no EMA)
    label_smoothing: float = 0.0
    distilled: bool = False  # targets mixed with a teacher's softened predictions
    learning_rate: float | None = None  # the cosine's peak (None: the quick profile's)
    level_jitter: bool = False  # training-only random level after the graph's normalisation
    clip_mask: bool = False  # a fourth input channel: where the camera clipped


VARIANTS: dict[str, Variant] = {
    "before": Variant(clean_batchnorm=True, overexposed=False, cosine_decay=False),
    "bn-augmented": Variant(clean_batchnorm=False, overexposed=False, cosine_decay=False),
    "overexposure": Variant(clean_batchnorm=True, overexposed=True, cosine_decay=False),
    "both": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=False),
    "cosine": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True),
    "strong overexposure": Variant(
        clean_batchnorm=False, overexposed=True, cosine_decay=True, gains=STRONG_OVEREXPOSURE
    ),
    "10 epochs": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, epochs=10),
    "saturated 1.15": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, background_target=1.15),
    "saturated 1.3": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, background_target=1.3),
    "128 px": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, image_size=128),
    "weight EMA": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, weight_ema=0.99),
    "label smoothing 0.1": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, label_smoothing=0.1),
    "distilled": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, distilled=True),
    "lr 3e-3": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, learning_rate=3e-3),
    "level jitter": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, level_jitter=True),
    "clip mask": Variant(clean_batchnorm=False, overexposed=True, cosine_decay=True, clip_mask=True),
}
LEVEL_GAIN = (0.85, 1.15)  # 'level jitter': gain after the in-graph normalisation, clipped at 1
LEVEL_CEILING = (0.8, 1.0)  # and, for half the images, a ceiling the bright band clips flat at
DISTILLATION_TEMPERATURE = 2.0
DISTILLATION_LABEL_SHARE = 0.5


@contextlib.contextmanager
def _replaced(owner, **attributes):
    """Set `owner`'s attributes for the block, then put the originals back (a variant's change, this process only)."""
    originals = {name: getattr(owner, name) for name in attributes}
    for name, value in attributes.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(owner, name, value)


def _clean_batchnorm_statistics():
    """Training batches for precise BatchNorm (training=True, cache=False) un-augmented, as before 2026-12-06."""
    from components.train import input as train_input

    original = train_input.dataset

    def dataset(*args, **kwargs):
        if kwargs.get("training") and kwargs.get("cache") is False:
            kwargs.update(augment=False, overexposure=0.0)
        return original(*args, **kwargs)

    return _replaced(train_input, dataset=dataset)


def _overexposure_gains(gains: tuple[float, float]):
    """Draw the overexposed training images' gain from `gains` (augment.OVEREXPOSURE, read when the data is built)."""
    from components.train import augment

    return _replaced(augment, OVEREXPOSURE=gains)


def _background_target(target: float):
    """Map the background to `target` in the graph's normalisation (domain.BACKGROUND_TARGET, read at trace time)."""
    from components import domain

    return _replaced(domain, BACKGROUND_TARGET=target)


def _weight_ema(momentum: float):
    """Adam with an EMA of the weights; validation, checkpoints and the kept model use the EMA weights."""
    import keras

    from components.train import fitting

    callbacks = fitting.callbacks

    def compile_with_ema(model, learning_rate, label_smoothing):
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=momentum),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
            metrics=["accuracy"],
        )

    def callbacks_with_swap(*args, **kwargs):  # first: precise BN and the checkpoints then see the EMA weights
        return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] + callbacks(*args, **kwargs)

    return _replaced(fitting, compile_model=compile_with_ema, callbacks=callbacks_with_swap)


@functools.lru_cache(maxsize=2)
def _teacher_targets(teacher: Path, split: Path) -> np.ndarray:
    """The teacher's predictions on the clean training images (shard order), softened, mixed with the labels."""
    from components import domain
    from components.train import input as train_input
    from components.train import models

    model = models.load_keras_model(teacher)
    pixels, labels = train_input.pixels_and_labels(split, "train", int(model.input_shape[1]))
    probabilities = model.predict(pixels, batch_size=64, verbose=0).astype(np.float64)
    print(f"teacher {teacher}: training accuracy {(probabilities.argmax(1) == labels).mean():.2%}")
    soft = probabilities ** (1.0 / DISTILLATION_TEMPERATURE)
    soft /= soft.sum(axis=1, keepdims=True)
    one_hot = np.eye(domain.NUM_CLASSES)[labels]
    return (DISTILLATION_LABEL_SHARE * one_hot + (1 - DISTILLATION_LABEL_SHARE) * soft).astype(np.float32)


@contextlib.contextmanager
def _distilled(targets: np.ndarray):
    """The training batches carry `targets` (one row per training image, shard order) instead of one-hot labels."""
    import tensorflow as tf

    from components.train import augment, fitting
    from components.train import input as train_input

    dataset, one_hot = train_input.dataset, fitting.one_hot

    def with_targets(split_dir, split, image_size, batch_size, **kwargs):
        if not (split == "train" and kwargs.get("training") and kwargs.get("count") is not None):
            return dataset(split_dir, split, image_size, batch_size, **kwargs)  # validation, precise-BN batches
        seed = kwargs["seed"]
        pixels, _ = train_input.pixels_and_labels(split_dir, "train", image_size)
        ds = tf.data.Dataset.from_tensor_slices((pixels, targets)).shuffle(
            2048, seed=seed, reshuffle_each_iteration=True
        )
        ds = ds.map(
            lambda x, t: (augment.photometric(x, kwargs.get("overexposure", 0.0)), t),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        geometry = train_input.geometry_augmentation(seed)
        ds = ds.batch(batch_size).map(
            lambda x, t: (tf.clip_by_value(geometry(x, training=True), 0.0, 1.0), t),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.prefetch(tf.data.AUTOTUNE)

    def one_hot_unless_targets(ds):
        return ds if len(ds.element_spec[1].shape) == 2 else one_hot(ds)

    with _replaced(fitting, one_hot=one_hot_unless_targets), _replaced(train_input, dataset=with_targets):
        yield


def _level_jitter():
    """The CNN's Normalize layer jitters the normalised level while training (LEVEL_GAIN, LEVEL_CEILING)."""
    import keras
    import tensorflow as tf

    from components.train import models

    layers = models.graph_layers()

    @keras.saving.register_keras_serializable(package="leukoflow_benchmark")
    class LevelJitteredNormalize(layers.normalize):
        def call(self, inputs, training=None):
            if training:
                shape = [tf.shape(inputs)[0], 1, 1, 1]
                inputs = tf.clip_by_value(inputs * tf.random.uniform(shape, *LEVEL_GAIN), 0.0, 1.0)
                ceiling = tf.where(tf.random.uniform(shape) < 0.5, tf.random.uniform(shape, *LEVEL_CEILING), 1.0)
                inputs = tf.minimum(inputs, ceiling)
            return super().call(inputs)

    return _replaced(models, graph_layers=lambda: layers._replace(normalize=LevelJitteredNormalize))


def _clip_mask():
    """The graph's brightness layer also outputs where the received image clipped, as a fourth channel."""
    import keras
    import tensorflow as tf

    from components.train import models

    layers = models.graph_layers()

    @keras.saving.register_keras_serializable(package="leukoflow_benchmark")
    class BrightnessAndClipMask(layers.brightness):
        def call(self, inputs):
            clipped = tf.cast(tf.reduce_min(inputs, axis=-1, keepdims=True) >= 254.0 / 255.0, inputs.dtype)
            return tf.concat([super().call(inputs), clipped], axis=-1)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], input_shape[-1] + 1)

    return _replaced(models, graph_layers=lambda: layers._replace(brightness=BrightnessAndClipMask))


def val_accuracies(keras_path: str, split: Path, size: int) -> dict[str, float]:
    """A Keras model's accuracy on the clean validation images and under every perturbation of evaluation."""
    import tensorflow as tf

    from components import domain, records
    from components.evaluate.robustness import encode, robustness
    from components.train import models

    model = models.load_keras_model(keras_path)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def pixels(encoded):  # the model applies its own normalisation, as in the served graph
        return tf.map_fn(
            lambda b: domain.tf_preprocess_encoded(b, size, "none"),
            encoded,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )

    def predict(images: list[bytes]) -> np.ndarray:
        return np.concatenate(
            [model.predict_on_batch(pixels(tf.constant(images[i : i + 64]))) for i in range(0, len(images), 64)]
        )

    examples = list(records.iter_examples(split / "val"))
    labels = np.array([e["label"] for e in examples])
    rgb = [domain.load_rgb(e["encoded"]) for e in examples]
    clean = float((predict([encode(x) for x in rgb]).argmax(axis=1) == labels).mean())
    return {"clean": clean, **robustness(predict, rgb, labels)}


def run_variant(variant: str, seed: int, split: Path, work: Path, teacher: Path | None = None) -> dict:
    from components import settings
    from components.evaluate.robustness import plausible
    from components.train.executor import run_train

    chosen, quick = VARIANTS[variant], settings.model_config("quick", "cnn")
    overexposure = quick.overexposure if chosen.overexposed else 0.0
    config = quick.with_overrides(
        seed=seed,
        overexposure=overexposure,
        epochs=chosen.epochs or quick.epochs,
        cosine_decay=chosen.cosine_decay,
        image_size=chosen.image_size or quick.image_size,
        label_smoothing=chosen.label_smoothing,
        learning_rate=chosen.learning_rate or quick.learning_rate,
    )
    started = time.perf_counter()
    if chosen.distilled and teacher is None:
        raise ValueError(f"variant {variant!r} needs --teacher (a pipeline run's mobilenetv2 keras/model.keras)")
    changes = [
        (chosen.clean_batchnorm, _clean_batchnorm_statistics),
        (chosen.gains, lambda: _overexposure_gains(chosen.gains)),
        (chosen.background_target, lambda: _background_target(chosen.background_target)),
        (chosen.weight_ema, lambda: _weight_ema(chosen.weight_ema)),
        (chosen.distilled, lambda: _distilled(_teacher_targets(teacher, split))),
        (chosen.level_jitter, _level_jitter),
        (chosen.clip_mask, _clip_mask),
    ]
    with contextlib.ExitStack() as stack:
        for wanted, change in changes:
            if wanted:
                stack.enter_context(change())
        trained = run_train(
            split, work / f"{variant.replace(' ', '-')}-{seed}", config, verbose=0, export_saved_model=False
        )
        train_s = time.perf_counter() - started
        val = val_accuracies(trained["keras_model"], split, config.image_size)
    worst = min(plausible(), key=val.get)
    return {
        "variant": variant,
        "seed": seed,
        "overexposure": overexposure,
        "cosine_decay": config.cosine_decay,
        "train_s": round(train_s, 1),
        "val_clean": val["clean"],
        "worst_plausible": val[worst],
        "worst_name": worst,
        "brightness_plus_15": val["brightness +15%"],
        "grayscale": val["grayscale"],
        "val": val,
    }


def write(rows: list[dict], note: str = "") -> None:
    from components import atomic_files

    atomic_files.write_text(RESULTS / "cnn_robustness.json", json.dumps({"note": note, "runs": rows}, indent=1))
    lines = [
        "# The quick CNN under another lab's light (validation split)",
        "",
        note,
        "",
        "| variant | seed | val clean | worst plausible (which) | brightness +15% | grayscale | training (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['val_clean']:.2%} | {r['worst_plausible']:.2%} "
            f"({r['worst_name']}) | {r['brightness_plus_15']:.2%} | {r['grayscale']:.2%} | {r['train_s']:.0f} |"
        )
    lines += [
        "",
        "| variant | runs | mean val clean | mean worst plausible | lowest worst plausible |",
        "|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        lines.append(
            f"| {variant} | {len(mine)} | {np.mean([r['val_clean'] for r in mine]):.2%} | "
            f"{np.mean([r['worst_plausible'] for r in mine]):.2%} | "
            f"{min(r['worst_plausible'] for r in mine):.2%} |"
        )
    atomic_files.write_text(RESULTS / "cnn_robustness.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split", type=Path, default=None, help="split directory (default: the last `leukoflow data split`)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--append", action="store_true", help="keep the runs already in the results file and add these")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where the trained variants go (default: $LEUKOFLOW_HOME/runs/cnn_robustness)",
    )
    parser.add_argument(
        "--teacher", type=Path, default=None, help="the 'distilled' variant's teacher (a keras model file)"
    )
    args = parser.parse_args(argv)
    from components.home import home

    split = args.split
    if split is None:
        from components.split.cli import default_out

        split = default_out()
    work = args.work or home() / "runs" / "cnn_robustness"
    earlier = json.loads((RESULTS / "cnn_robustness.json").read_text()) if args.append else {"note": "", "runs": []}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [run_variant(v, s, split, work, args.teacher) for v in args.variants for s in args.seeds]
    note = f"Variants {', '.join(args.variants)}: measured from {started} on {split}."
    write(earlier["runs"] + rows, f"{earlier['note']}\n\n{note}".strip())
    return rows


if __name__ == "__main__":
    main()
