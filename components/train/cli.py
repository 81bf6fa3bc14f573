"""`leukoflow train --model NAME`: train one model from a profile's config and export it for serving."""

from __future__ import annotations

from pathlib import Path

import typer

from components import settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)


def default_out(model: str) -> Path:
    from components.home import home

    return home() / "runs" / "train" / model


def _human(result: dict) -> str:
    return "\n".join(
        [
            f"{result['model']}: val accuracy {result['val_accuracy']:.4f} after {result['epochs_run']} epochs "
            f"in {result['wall_time_s']:.0f}s ({result['params']:,} params)",
            f"weights: {result['weights_used']}",
            f"keras model: {result['keras_model']}",
            f"SavedModel: {result['saved_model']}",
        ]
    )


@app.command()
def train(
    model: str = typer.Option(..., "--model", help=f"Model to train: {', '.join(settings.MODEL_NAMES)}."),
    split: Path = typer.Option(
        None,
        "--split",
        help="Split directory with {train,val,test}/shard-*.tfrecord (default: the last `leukoflow data split` run's).",
    ),
    out: Path = typer.Option(None, "--out", help="Output directory (default: $LEUKOFLOW_HOME/runs/train/MODEL)."),
    profile: str = typer.Option("quick", "--profile", help="Training profile from settings: quick or full."),
    weights: str = typer.Option(
        None, "--weights", help="Override pretrained weights: imagenet, none, or a .h5 file path."
    ),
    epochs: int = typer.Option(None, "--epochs", help="Override phase-1 epochs."),
    fine_tune_epochs: int = typer.Option(None, "--fine-tune-epochs", help="Override phase-2 (fine-tuning) epochs."),
    image_size: int = typer.Option(None, "--image-size", help="Override the model's input size."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the batch size."),
    seed: int = typer.Option(None, "--seed", help="Override the random seed."),
    views: int = typer.Option(
        None,
        "--views",
        help="Override how many orientations of each image the model answers "
        "on (1, 2, 4 or 8; each costs one backbone pass).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Train one model (two-phase transfer learning where configured), save model.keras and the serving SavedModel."""
    from components.train.executor import run_train
    from components.train.models import WeightsNotFoundError

    overrides = {
        k: v
        for k, v in dict(
            weights=weights,
            epochs=epochs,
            fine_tune_epochs=fine_tune_epochs,
            image_size=image_size,
            batch_size=batch_size,
            seed=seed,
            views=views,
        ).items()
        if v is not None
    }
    try:
        config = settings.model_config(profile, model, **overrides)
    except ValueError as exc:
        fail(str(exc), as_json)
    if split is None:
        from components.split.cli import default_out as split_out

        split = split_out()
    try:
        result = run_train(split, out or default_out(model), config)
    except (FileNotFoundError, ValueError, WeightsNotFoundError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human)
