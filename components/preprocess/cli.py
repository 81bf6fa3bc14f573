"""`leukoflow data preprocess`: RGB, resize with the serving graph's ops, TFRecord shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from components import domain, settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)


def default_out() -> Path:
    from components.home import home

    return home() / "runs" / "data" / "preprocess"


def _human(result: dict) -> str:
    return "\n".join(
        [
            f"images: {result['count']} at {result['image_size']}x{result['image_size']} in {result['num_shards']} shards",
            "per class: " + ", ".join(f"{c} {result['per_class'][c]}" for c in domain.CLASS_NAMES),
            f"brightness: {result['brightness']} ({result['brightness_note']})",
            f"shards: {Path(result['shards'][0]).parent}",
        ]
    )


@app.command()
def preprocess(
    kept: Path = typer.Option(
        None, "--kept", help="kept.csv from `leukoflow data dedup` (default: the last dedup run's)."
    ),
    out: Path = typer.Option(None, "--out", help="Output directory (default: $LEUKOFLOW_HOME/runs/data/preprocess)."),
    profile: str = typer.Option(
        "quick",
        "--profile",
        help="Training profile whose source size the images are stored at (quick|full|smoke), as the pipeline does.",
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="Store at this side in pixels instead of the profile's source size."
    ),
    num_shards: int = typer.Option(settings.NUM_SHARDS, "--num-shards", help="Number of TFRecord shards."),
    brightness: str = typer.Option(
        "none",
        "--brightness",
        help="Brightness method recorded for the model graph: none|mean (applied in-graph, not to stored pixels).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Decode, convert to RGB and resize every kept image; write TFRecord shards."""
    from components.dedup.cli import default_out as dedup_out
    from components.preprocess.executor import run_preprocess

    try:
        size = image_size if image_size is not None else settings.profile(profile).source_size
        result = run_preprocess(
            kept or dedup_out() / "kept.csv",
            out or default_out(),
            image_size=size,
            num_shards=num_shards,
            brightness=brightness,
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human)
