"""`leukoflow data validate`: manifest, quarantine and the Great Expectations suite."""

from __future__ import annotations

from pathlib import Path

import typer

from components import domain, settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)


def default_out() -> Path:
    from components.home import home

    return home() / "runs" / "data" / "validate"


def _human(result: dict) -> str:
    lines = [
        f"images found: {result['images']} (valid {result['valid']}, quarantined {len(result['quarantined'])})",
        "per class: " + ", ".join(f"{c} {result['per_class'][c]}" for c in domain.CLASS_NAMES),
    ]
    if result.get("variant"):
        lines.append(
            f"variant: {result['variant']} (skipped {result['skipped_other_variant']} files of the other copy)"
        )
    lines += [f"  quarantined: {p}" for p in result["quarantined"]]
    for o in result["expectations"]:
        mark = "ok  " if o["success"] else ("FAIL" if o["critical"] else "warn")
        extra = "" if o["success"] or o["unexpected_count"] is None else f" ({o['unexpected_count']} unexpected)"
        lines.append(f"  [{mark}] {o['name']}{' (critical)' if o['critical'] else ''}{extra}")
    lines.append(f"manifest: {result['manifest']}")
    lines.append(f"data docs: {result['data_docs']}")
    lines.append(
        "validation passed" if result["success"] else "validation FAILED: " + ", ".join(result["failed_expectations"])
    )
    return "\n".join(lines)


@app.command()
def validate(
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Folder holding class folders at any depth (default: data/ filled by `dvc pull`)."
    ),
    out: Path = typer.Option(None, "--out", help="Output directory (default: $LEUKOFLOW_HOME/runs/data/validate)."),
    variant: str = typer.Option(
        "original",
        "--variant",
        help="Which copy to use when the download holds Original/ and Segmented/: original|segmented.",
    ),
    min_per_class: int = typer.Option(
        settings.MIN_IMAGES_PER_CLASS,
        "--min-per-class",
        help="Critical: fewer valid images in a class fails validation.",
    ),
    workers: int = typer.Option(None, "--workers", help="Decoding processes (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Inspect every image, quarantine unreadable ones, and run the Great Expectations suite."""
    from components.home import default_data_dir
    from components.validate.executor import DataNotFoundError, failure_message, run_validate

    try:
        result = run_validate(
            data_dir or default_data_dir(),
            out or default_out(),
            variant=variant,
            min_per_class=min_per_class,
            workers=workers,
        )
    except (DataNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human)
    if not result["success"]:
        typer.echo(f"error: {failure_message(result)}", err=True)
        raise typer.Exit(1)
