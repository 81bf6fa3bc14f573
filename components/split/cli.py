"""`leukoflow data split`: stratified, seeded, group-aware train/val/test split."""

from __future__ import annotations

from pathlib import Path

import typer

from components import settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)


def default_out() -> Path:
    from components.home import home

    return home() / "runs" / "data" / "split"


def _human(result: dict) -> str:
    return "\n".join(
        [
            f"images: {result['images']} in {result['groups']} groups ({result.get('grouping', 'duplicate groups')}), "
            f"seed {result['seed']}, ratios {result['ratios']}",
            result["table"].rstrip(),
            result["leakage_check"],
            f"split manifest: {result['split_csv']}",
        ]
    )


@app.command()
def split(
    kept: Path = typer.Option(
        None, "--kept", help="kept.csv from `leukoflow data dedup` (default: the last dedup run's)."
    ),
    preprocessed: Path = typer.Option(
        None,
        "--preprocessed",
        help="Shard directory from `leukoflow data preprocess` (default: the last run's, if any).",
    ),
    out: Path = typer.Option(None, "--out", help="Output directory (default: $LEUKOFLOW_HOME/runs/data/split)."),
    seed: int = typer.Option(settings.SEED, "--seed", help="Random seed; the same seed and data give the same split."),
    train: float = typer.Option(settings.SPLIT_RATIOS[0], "--train", help="Fraction of each class for training."),
    val: float = typer.Option(settings.SPLIT_RATIOS[1], "--val", help="Fraction of each class for validation."),
    test: float = typer.Option(settings.SPLIT_RATIOS[2], "--test", help="Fraction of each class for testing."),
    num_shards: int = typer.Option(settings.NUM_SHARDS, "--num-shards", help="TFRecord shards per split."),
    image_level: bool = typer.Option(
        not settings.SPLIT_BY_SLIDE,
        "--image-level/--by-slide",
        help="Group by duplicates only (the image-level split), or by pseudo-slide (the default).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Split the deduplicated images 70/15/15 per class, keeping duplicate groups whole."""
    from components.dedup.cli import default_out as dedup_out
    from components.preprocess.cli import default_out as preprocess_out
    from components.split.executor import run_split

    if preprocessed is None and list(preprocess_out().glob("*.tfrecord")):
        preprocessed = preprocess_out()
    try:
        result = run_split(
            kept or dedup_out() / "kept.csv",
            preprocessed,
            out or default_out(),
            ratios=(train, val, test),
            seed=seed,
            num_shards=num_shards,
            by_slide=not image_level,
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human)
