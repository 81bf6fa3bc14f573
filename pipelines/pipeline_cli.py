"""`leukoflow pipeline compile|run|schedule`."""

from __future__ import annotations

from pathlib import Path

import typer

from components import home
from components.cli_output import emit, fail

app = typer.Typer(add_completion=False, help="Compile, run or schedule the Kubeflow pipeline.", no_args_is_help=True)


def _parse_weights(values: list[str]) -> dict[str, str]:
    weights = {}
    for value in values:
        model, sep, spec = value.partition("=")
        if not sep or not model or not spec:
            raise typer.BadParameter(f"expected MODEL=imagenet|none|PATH, got {value!r}", param_hint="--weights")
        weights[model] = spec
    return weights


CLUSTER_CONFIG_HELP = (
    "The cluster config (KEY=VALUE file: image, volumes, MLflow URI, external smears; "
    "example infra/k8s/cluster/cluster.env, docs/kubeflow.md)."
)


def _cluster(path: Path, as_json: bool):
    from pipelines.cluster_config import ClusterConfigError, load

    try:
        return load(path)
    except ClusterConfigError as exc:
        fail(str(exc), as_json)


@app.command()
def compile(
    output: Path = typer.Option(
        None, "--output", "-o", help="Where to write the KFP IR YAML (default: $LEUKOFLOW_HOME/pipeline.yaml)."
    ),
    cluster_config: Path = typer.Option(None, "--cluster-config", help=CLUSTER_CONFIG_HELP + " Default: that example."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compile the pipeline to KFP IR YAML for the cluster the cluster config describes."""
    from pipelines.cluster_config import DEFAULT_PATH
    from pipelines.pipeline import compile_pipeline

    config_path = cluster_config or DEFAULT_PATH
    path = compile_pipeline(output or home.home() / "pipeline.yaml", _cluster(config_path, as_json))
    emit(
        {"output": str(path), "cluster_config": str(config_path)},
        as_json,
        lambda r: f"wrote {home.display(r['output'])} for {home.display(r['cluster_config'])}",
    )


@app.command()
def run(
    local: bool = typer.Option(False, "--local", help="Run here under kfp.local.SubprocessRunner (no cluster)."),
    profile: str = typer.Option("quick", help="quick (2 CPU cores, about 20 min) or full (the paper's protocol)."),
    data_dir: Path = typer.Option(
        home.default_data_dir(), help="Dataset root with class folders (`dvc pull` fills data/)."
    ),
    model: list[str] = typer.Option([], "--model", help="Train only these models (repeatable); default all three."),
    weights: list[str] = typer.Option(
        [], "--weights", help="Override pretrained weights: MODEL=imagenet|none|PATH (repeatable)."
    ),
    drift_report: str = typer.Option("", help="Drift report that triggered this run (recorded with the run)."),
    no_promote: bool = typer.Option(False, "--no-promote", help="Evaluate and gate, but never promote."),
    pipeline_root: Path = typer.Option(None, help="Where run artifacts go; default .leukoflow/pipeline-root."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: status, pipeline_root, models (progress goes to stderr)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Stream every task's full output, not one line per step."
    ),
    external_ood_dir: Path = typer.Option(
        None,
        "--external-ood-dir",
        help="Smears from another lab (none an ALL-stage "
        "image): the gate's out-of-distribution floor is measured on half of them "
        "(default $LEUKOFLOW_EXTERNAL_OOD_DIR; without one, no model is promoted).",
    ),
) -> None:
    """Run the whole pipeline (locally with --local): one line per step; the full log goes to a file under the state home."""
    if not local:
        fail("only --local runs from this command; on a cluster, upload the compiled YAML (see README)", as_json)
    from components.validate.executor import DataNotFoundError, discover

    try:
        discover(data_dir)
    except DataNotFoundError as exc:
        fail(str(exc), as_json)
    from pipelines.local import run_local

    summary = run_local(
        data_dir=data_dir,
        profile=profile,
        pipeline_root=pipeline_root,
        models=model or None,
        weights=_parse_weights(weights),
        drift_report=drift_report,
        promote=not no_promote,
        quiet_stdout=as_json,
        verbose=verbose,
        external_ood_dir=str(external_ood_dir) if external_ood_dir else None,
    )
    ordered = {"status": summary["status"], "pipeline_root": summary["pipeline_root"], "models": summary["models"]}
    ordered.update({k: v for k, v in summary.items() if k not in ordered})
    emit(ordered, as_json, _human_summary)
    if summary["status"] != "SUCCEEDED":
        raise typer.Exit(1)


def _human_summary(summary: dict) -> str:
    """The run's outcome in a few lines; paths relative to the repository or $LEUKOFLOW_HOME."""
    failed = summary.get("failed_steps")
    lines = [
        f"pipeline {summary['status']} in {summary.get('wall_time_s')} s (profile {summary.get('profile')})"
        + (f": failed step {', '.join(failed)}" if failed else "")
    ]
    if summary["models"]:
        lines.append(f"  {'model':<12} {'accuracy':>8} {'macro-F1':>8}   (test split)")
        for name, figures in summary["models"].items():
            lines.append(f"  {name:<12} {figures['accuracy']:>8.4f} {figures['macro_f1']:>8.4f}")
    decision = summary.get("decision")
    if decision:
        if not decision.get("promoted"):
            verdict = "not promoted"
        elif decision.get("version") is None:  # the gate chose, but the promote step did not run (--no-promote)
            verdict = f"chose {decision.get('chosen')}, not promoted (promotion disabled)"
        else:
            verdict = f"promoted {decision.get('chosen')} as version {decision.get('version')}"
        lines.append(f"gate: {verdict}: {decision.get('reason')}")
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    if summary.get("pipeline_root"):
        lines.append(f"artifacts: {home.display(summary['pipeline_root'])}")
    lines.append(f"full log: {home.display(summary['log'])}")
    return home.display_text("\n".join(lines))


@app.command()
def schedule(
    cron: str = typer.Option(..., help="KFP cron expression with seconds, e.g. '0 0 3 * * *' (daily 03:00)."),
    experiment: str = typer.Option("leukoflow", help="Experiment name; created if missing."),
    host: str = typer.Option(None, envvar="KFP_HOST", help="KFP API endpoint; default from the in-cluster config."),
    cluster_config: Path = typer.Option(None, "--cluster-config", help=CLUSTER_CONFIG_HELP),
    package: Path = typer.Option(
        None, help="A compiled pipeline YAML to submit as it is, instead of compiling from --cluster-config."
    ),
    job_name: str = typer.Option("leukoflow-retrain", help="Name of the recurring run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Create a KFP recurring run of the pipeline, compiled from the cluster config (the same bytes as `compile`)."""
    import tempfile

    from monitoring.schedule import create_schedule
    from pipelines.pipeline import compile_pipeline

    if (package is None) == (cluster_config is None):
        fail("give exactly one of --cluster-config (compile now) or --package (a compiled YAML)", as_json)
    with tempfile.TemporaryDirectory() as tmp:  # never overwrites the package `compile` wrote
        package_path = package or compile_pipeline(Path(tmp) / "pipeline.yaml", _cluster(cluster_config, as_json))
        try:
            result = create_schedule(
                cron=cron, experiment=experiment, package_path=str(package_path), host=host, job_name=job_name
            )
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc), as_json)
    if cluster_config is not None:
        result["package"] = None
        result["cluster_config"] = str(cluster_config)
    emit(result, as_json)
