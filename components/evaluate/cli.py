"""`leukoflow evaluate`: judge exported models on the test split; `leukoflow evaluate compare` tabulates them."""

from __future__ import annotations

from pathlib import Path

import typer

from components import settings
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)


def default_out(model_dir: Path) -> Path:
    from components.home import home

    name = model_dir.name if model_dir.name != "saved_model" else model_dir.parent.name
    return home() / "runs" / "evaluate" / name


def _human(result: dict) -> str:
    lat = result["latency_ms"]
    lines = [
        f"{result['model']}: accuracy {result['accuracy']:.4f} {result['accuracy_ci']}, "
        f"macro-F1 {result['macro_f1']:.4f} {result['macro_f1_ci']} on {result['test_images']} test images",
        f"latency batch 1 p50 {lat['batch1_p50']:.1f} ms, p95 {lat['batch1_p95']:.1f} ms; "
        f"batch 32 {result['throughput_b32']:.1f} images/s",
    ]
    if "robustness_worst" in result:
        lines.append(f"worst perturbed accuracy {result['robustness_worst']:.4f}")
    missed = result.get("missed_malignancy")
    if missed and missed.get("malignant_images"):
        lines.append(
            f"missed malignancy {missed['missed']} of {missed['malignant_images']} malignant "
            f"({missed['missed_share']:.4f}), sensitivity {missed['sensitivity']:.4f}"
        )
    if "shortcut_baseline" in result:
        sb = result["shortcut_baseline"]
        lines.append(
            f"shortcut baseline (colour statistics): accuracy {sb['accuracy']:.4f}, macro-F1 {sb['macro_f1']:.4f}"
        )
    return "\n".join(lines)


@app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    model: Path = typer.Option(
        None, "--model", help="Training output directory (holding saved_model/) or a SavedModel directory."
    ),
    split: Path = typer.Option(
        None,
        "--split",
        help="Split directory with test/shard-*.tfrecord (default: the last `leukoflow data split` run's).",
    ),
    out: Path = typer.Option(
        None, "--out", help="Output directory for metrics.json (default: $LEUKOFLOW_HOME/runs/evaluate/NAME)."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    latency_runs: int = typer.Option(50, "--latency-runs", help="Batch-1 calls timed for latency percentiles."),
    no_shortcut: bool = typer.Option(False, "--no-shortcut", help="Skip the colour-statistics shortcut baseline."),
    no_robustness: bool = typer.Option(False, "--no-robustness", help="Skip the perturbation robustness check."),
    no_probes: bool = typer.Option(
        False, "--no-probes", help="Skip the leukocyte probes (removed, context swapped, Grad-CAM attention)."
    ),
    external_dir: Path = typer.Option(
        None,
        "--external-dir",
        help="Smears from another lab (none an ALL-stage image) "
        "for out-of-distribution detection; default $LEUKOFLOW_EXTERNAL_OOD_DIR.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Evaluate one exported model on the test split (metrics, intervals, latency, shortcut, robustness); `compare` tabulates."""
    from components.evaluate.executor import run_evaluate

    if ctx.invoked_subcommand is not None:  # `leukoflow evaluate compare ...`
        return
    if model is None:
        fail("--model is required (a training output directory or a SavedModel directory)", as_json)
    if split is None:
        from components.split.cli import default_out as split_out

        split = split_out()
    try:
        result = run_evaluate(
            split,
            model,
            out or default_out(model),
            bootstrap=bootstrap,
            latency_runs=latency_runs,
            shortcut=not no_shortcut,
            robust=not no_robustness,
            probes=not no_probes,
            external_dir=external_dir or settings.EXTERNAL_OOD_DIR or None,
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human)


@app.command()
def compare(
    metrics: list[Path] = typer.Argument(..., help="metrics.json files (or directories holding one)."),
    out: Path = typer.Option(..., "--out", help="Markdown file to write the comparison table to."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Write one markdown table comparing the models' metrics."""
    from components.evaluate.compare import compare as write_compare

    try:
        text = write_compare(metrics, out)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
    emit({"markdown": str(out), "table": text}, as_json, lambda r: r["table"])
