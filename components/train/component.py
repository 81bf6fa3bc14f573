"""KFP component: train one model from a profile's config and export it (the Model artifact is the training output dir)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def train_op(
    split: Input[Dataset],
    model_name: str,
    profile: str,
    trained: Output[Model],
    metrics: Output[Metrics],
    summary: Output[Markdown],
    weights: Optional[str] = None,
    seed: int = -1,
    overrides_json: Optional[str] = None,
) -> float:
    """Run components.train.executor.run_train; returns the validation accuracy.

    `weights`: JSON {model name: "imagenet" | "none" | path} (models not named keep the profile's), or one value for all.
    `overrides_json`: other ModelConfig fields to override, as a JSON object. `seed` -1: the profile's (an int
    cannot be Optional here: kfp 2.17's local runner fails on a None int, `int(None)` in executor_input_utils).
    (Defaults must be literals: KFP runs this function's source on its own, without the module's imports.)
    """
    import json

    from components.settings import model_config
    from components.train.executor import run_train

    overrides = {**({"seed": seed} if seed >= 0 else {}), **json.loads(overrides_json or "{}")}
    try:
        chosen = json.loads(weights) if weights else {}
    except json.JSONDecodeError:
        chosen = weights  # a plain value such as none or a file path
    if isinstance(chosen, dict):
        chosen = chosen.get(model_name)
    if chosen:
        overrides["weights"] = chosen
    config = model_config(profile, model_name, **overrides)
    result = run_train(split.path, trained.path, config)
    trained.metadata.update(
        {
            "model": model_name,
            "framework": "tensorflow",
            "weights_used": result["weights_used"],
            "saved_model": result["saved_model"],
            "image_size": config.image_size,
        }
    )
    for key in ("val_accuracy", "val_loss", "params", "epochs_run", "wall_time_s"):
        metrics.log_metric(key, float(result[key]))
    with open(summary.path, "w") as handle:
        handle.write(
            f"# {model_name}\n\nval accuracy {result['val_accuracy']:.4f}, {result['epochs_run']} epochs, "
            f"{result['wall_time_s']:.0f}s, weights: {result['weights_used']}\n\n"
            f"```json\n{json.dumps(result['config'], indent=1)}\n```\n"
        )
    return float(result["val_accuracy"])
