"""`leukoflow data dedup`: exact and perceptual duplicate groups; one image kept per group."""

from __future__ import annotations

from pathlib import Path

import typer

from components import atomic_files, domain, settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)


def default_out() -> Path:
    from components.home import home

    return home() / "runs" / "data" / "dedup"


def _human(result: dict) -> str:
    lines = [
        f"images: {result['images']}, kept: {result['kept']} (removed {result['removed']})",
        f"groups of 2+: {len(result['groups'])} ({result['exact_groups']} exact, {result['near_groups']} near); "
        f"byte-identical pairs: {result['exact_pairs']}; pHash threshold: {result['hamming']}",
        f"label conflicts (excluded whole): {len(result['conflicts'])}",
        *[f"  conflict: {', '.join(c)}" for c in result["conflicts"]],
        "kept per class: " + ", ".join(f"{c} {result['per_class_kept'][c]}" for c in domain.CLASS_NAMES),
        f"kept manifest: {result['kept_csv']}",
        f"report: {result['report']}",
    ]
    return "\n".join(lines)


@app.command()
def dedup(
    manifest: Path = typer.Option(
        None, "--manifest", help="manifest.csv from `leukoflow data validate` (default: the last validate run's)."
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Build the manifest from this folder instead (class folders at any depth)."
    ),
    out: Path = typer.Option(None, "--out", help="Output directory (default: $LEUKOFLOW_HOME/runs/data/dedup)."),
    hamming: int = typer.Option(
        settings.DEDUP_HAMMING,
        "--hamming",
        help="pHash distance (bits of 64) at or below which images are near-duplicates.",
    ),
    variant: str = typer.Option(
        "original", "--variant", help="With --data-dir: original|segmented when both copies are present."
    ),
    workers: int = typer.Option(None, "--workers", help="Hashing processes (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Group exact (sha256) and near (pHash) duplicates, keep one per group, exclude label conflicts."""
    from components.dedup.executor import run_dedup
    from components.home import default_data_dir
    from components.validate.cli import default_out as validate_out
    from components.validate.executor import DataNotFoundError, build_manifest

    out = out or default_out()
    try:
        if manifest is None and (data_dir is not None or not (validate_out() / "manifest.csv").is_file()):
            frame, _ = build_manifest(data_dir or default_data_dir(), variant, workers)
            out.mkdir(parents=True, exist_ok=True)
            manifest = out / "manifest.csv"
            atomic_files.write_csv(manifest, frame)
        result = run_dedup(manifest or validate_out() / "manifest.csv", out, hamming=hamming, workers=workers)
    except (DataNotFoundError, FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human)
