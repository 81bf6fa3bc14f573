"""`leukoflow promote` (gate + promotion) and `leukoflow registry list|rollback|promote` (operations)."""

from __future__ import annotations

from pathlib import Path

import typer

from components import settings
from components.cli_output import emit, fail

promote_app = typer.Typer(add_completion=False)
registry_app = typer.Typer(
    add_completion=False, help="The model registry and the served labels: list, rollback, promote."
)


def _default_candidates() -> list[Path]:
    from components.home import home

    root = home() / "runs" / "evaluate"
    return sorted(p for p in root.glob("*") if (p / "metrics.json").is_file()) if root.is_dir() else []


def _default_split() -> Path | None:
    from components.home import home

    path = home() / "runs" / "data" / "split"
    return path if (path / "split.csv").is_file() else None


def _human_promote(result: dict) -> str:
    lines = []
    for r in result["rows"]:
        status = "pass" if r["passes_floors"] else "fail (" + "; ".join(r["failures"]) + ")"
        cost = f", cost {r['cost']:.3f}" if r["cost"] is not None else ""
        lines.append(f"  {'*' if r['chosen'] else ' '} {r['name']:<12} macro-F1 {r['macro_f1']}, floors {status}{cost}")
    lines += [f"decision: {result['decision_md']}", result["summary"]]
    return "\n".join(lines)


@promote_app.command()
def promote(
    candidates: list[Path] = typer.Option(
        None,
        "--candidates",
        help="Evaluation output directories (each with metrics.json); "
        "repeat the option or list them after it. Default: every run under $LEUKOFLOW_HOME/runs/evaluate.",
    ),
    extra: list[Path] = typer.Argument(None, help="More candidate directories.", show_default=False),
    split_dir: Path = typer.Option(
        None,
        "--split-dir",
        help="The split the candidates were evaluated on (split.csv and test shards; "
        "default: $LEUKOFLOW_HOME/runs/data/split).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Where decision.md, decision.json and model_card.md go (default: $LEUKOFLOW_HOME/reports/promote-<id>).",
    ),
    label: str = typer.Option(
        "canary",
        "--label",
        help="Label the promoted version gets: canary (alias challenger; the first version, with nothing stable "
        "yet, goes to stable) until `leukoflow rollout promote` moves it, or stable (alias champion) at once.",
    ),
    pipeline_run_id: str = typer.Option(
        "", "--pipeline-run-id", help="Pipeline run id recorded in the registry (default: manual)."
    ),
    reference: Path = typer.Option(
        None,
        "--reference",
        help="Drift reference profile (file, or the reference step's directory) stored with the version.",
    ),
    drift_report: str = typer.Option(
        "", "--drift-report", help="The drift report that triggered this retraining (recorded in the registry)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Decide and write the decision only; change nothing."),
    step_wait: float = typer.Option(
        0.0,
        "--step-wait-seconds",
        help="Pause between the two models.config steps (set to the server's config poll interval).",
    ),
    serving_rest: str = typer.Option(
        None,
        "--serving-rest",
        help="REST address of a running server to wait on between the steps until it "
        "reports the new version AVAILABLE (default: $LEUKOFLOW_SERVING_REST or http://127.0.0.1:8501; '' to skip).",
    ),
    min_macro_f1: float = typer.Option(settings.GATE_MIN_MACRO_F1, "--min-macro-f1", help="Floor: macro-F1."),
    min_class_recall: float = typer.Option(
        settings.GATE_MIN_CLASS_RECALL, "--min-class-recall", help="Floor: every class's recall."
    ),
    min_robust: float = typer.Option(
        None,
        "--min-robust-accuracy",
        help="Floor: worst accuracy under the plausible perturbations (default: the profile's, else settings.GATE_MIN_ROBUST_ACCURACY).",
    ),
    margin: float = typer.Option(
        settings.GATE_MACRO_F1_MARGIN,
        "--margin",
        help="Candidates within this macro-F1 of the best count as equally good.",
    ),
    max_regression: float = typer.Option(
        settings.GATE_MAX_REGRESSION, "--max-regression", help="Macro-F1 the new model may lose against the champion."
    ),
    profile: str = typer.Option(
        "quick", "--profile", help="Profile whose gate settings apply (smoke does not gate the trust floors)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Gate the evaluated candidates and promote the best-balanced one (model store, models.config, registry)."""
    from components.promote.executor import PromotionError, run_promote
    from components.promote.gate.policy import Policy

    paths = list(candidates or []) + list(extra or []) or _default_candidates()
    if not paths:
        fail("no candidates: pass --candidates DIR... (evaluation outputs with metrics.json)", as_json)
    if label not in ("stable", "canary"):
        fail(f"--label must be stable or canary, got {label!r}", as_json)
    import dataclasses

    from components import settings as _settings

    # The profile's gate settings (smoke does not gate the trust floors), then the explicit thresholds.
    try:
        policy = Policy(**_settings.profile(profile).gate)
    except ValueError as exc:
        fail(str(exc), as_json)
    given = {
        "min_macro_f1": min_macro_f1,
        "min_class_recall": min_class_recall,
        "min_robust_accuracy": min_robust,
        "margin": margin,
        "max_regression": max_regression,
    }
    policy = dataclasses.replace(policy, **{k: v for k, v in given.items() if v is not None})
    try:
        result = run_promote(
            paths,
            out,
            split_dir or _default_split(),
            label=label,
            pipeline_run_id=pipeline_run_id,
            policy=policy,
            dry_run=dry_run,
            step_wait_s=step_wait,
            reference=reference,
            drift_report=drift_report,
            serving_rest=serving_rest,
        )
    except (FileNotFoundError, ValueError, PromotionError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human_promote)


def _human_list(result: dict) -> str:
    rows = result["versions"]
    if not rows:
        return "no registered versions yet"
    lines = [f"{'version':>7}  {'model':<12} {'macro-F1':>8} {'accuracy':>8}  {'label':<7} {'aliases':<20} model_path"]
    for r in rows:
        f1 = f"{r['macro_f1']:.4f}" if r["macro_f1"] is not None else "-"
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        lines.append(
            f"{r['version']:>7}  {str(r['model']):<12} {f1:>8} {acc:>8}  {str(r['label'] or '-'):<7} "
            f"{','.join(r['aliases']) or '-':<20} {r['model_path'] or '-'}"
        )
    return "\n".join(lines)


@registry_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print a JSON list of versions.")) -> None:
    """Registered versions with metrics, aliases, serving labels and model paths."""
    import sys

    from components.cli_output import to_json
    from components.promote.executor import list_models

    try:
        rows = list_models()
    except ValueError as exc:
        fail(str(exc), as_json)
    if as_json:  # the documented form: a JSON list of objects
        sys.stdout.write(to_json(rows) + "\n")
        return
    typer.echo(_human_list({"versions": rows}))


@registry_app.command()
def rollback(
    step_wait: float = typer.Option(0.0, "--step-wait-seconds", help="Pause between the two models.config steps."),
    serving_rest: str = typer.Option(
        None,
        "--serving-rest",
        help="REST address of a running server to wait on between the steps "
        "(default: $LEUKOFLOW_SERVING_REST or http://127.0.0.1:8501; '' to skip).",
    ),
    server: str = typer.Option(
        None,
        "--server",
        help="gRPC HOST:PORT of a running server to send each models.config step "
        "to (HandleReloadConfigRequest) and confirm the label answers; without it, say that "
        "the server must poll the config or be told to reload.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Move stable (and the champion alias) back to the previous champion."""
    from components.promote.executor import PromotionError
    from components.promote.executor import rollback as do_rollback

    try:
        result = do_rollback(step_wait_s=step_wait, serving_rest=serving_rest, server=server)
    except (ValueError, PromotionError, FileNotFoundError) as exc:
        fail(str(exc), as_json)
    emit(
        result,
        as_json,
        lambda r: (
            f"stable -> version {r['version']} (was {r['rolled_back_from']}); aliases {r['aliases']}\n{r['server']}"
        ),
    )


@registry_app.command("promote")
def promote_version(
    version: int = typer.Argument(..., help="Registered version to label."),
    label: str = typer.Option(..., "--label", help="stable (alias champion) or canary (alias challenger)."),
    step_wait: float = typer.Option(0.0, "--step-wait-seconds", help="Pause between the two models.config steps."),
    serving_rest: str = typer.Option(
        None,
        "--serving-rest",
        help="REST address of a running server to wait on between the steps "
        "(default: $LEUKOFLOW_SERVING_REST or http://127.0.0.1:8501; '' to skip).",
    ),
    server: str = typer.Option(
        None,
        "--server",
        help="gRPC HOST:PORT of a running server to send each models.config step "
        "to (HandleReloadConfigRequest) and confirm the label answers; without it, say that "
        "the server must poll the config or be told to reload.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Manual step: put a label on a registered version (registry and models.config together)."""
    from components.promote.executor import PromotionError
    from components.promote.executor import promote_version as do_promote

    if label not in ("stable", "canary"):
        fail(f"--label must be stable or canary, got {label!r}", as_json)
    try:
        result = do_promote(version, label, step_wait_s=step_wait, serving_rest=serving_rest, server=server)
    except (ValueError, PromotionError, FileNotFoundError) as exc:
        fail(str(exc), as_json)
    emit(
        result, as_json, lambda r: f"version {r['version']} is now {r['label']}; aliases {r['aliases']}\n{r['server']}"
    )


rollout_app = typer.Typer(
    add_completion=False,
    help="The staged rollout: the canary's live shadow comparison (status), then promote to stable, or abort.",
)


def _human_rollout(r: dict) -> str:
    if r["canary"] is None:
        return "no canary is served" + (f" (stable: version {r['stable']})" if r["stable"] is not None else "")
    s = r["summary"]
    lines = [f"canary version {r['canary']} beside stable version {r['stable']} (shadow records: {r['shadow_dir']})"]
    lines.append(
        f"compared {s['compared']} images in {s['calls']} calls; shadow calls dropped {s['dropped']}, failed {s['failed']}"
    )
    agreement = "-" if s["agreement"] is None else f"{s['agreement']:.2%}"
    per_class = ", ".join(
        f"{c} {'-' if v['agreement'] is None else format(v['agreement'], '.2%')} ({v['compared']})"
        for c, v in s["per_class"].items()
    )
    lines.append(f"agreement {agreement}; per class of the stable answer: {per_class}")

    def pct(v):
        return "-" if v is None else f"{v:.2%}"

    lines.append(
        f"referral rate: stable {pct(s['referral_rate']['stable'])}, canary {pct(s['referral_rate']['canary'])}"
    )
    for side in ("stable", "canary"):
        lat = s["latency"][side]
        lines.append(f"latency {side}: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
    if s["disagreement_list"]:
        lines.append(f"disagreements ({s['disagreements']}; request id, image, stable -> canary):")
        lines += [f"  {d['request_id']} #{d['index']}: {d['stable']} -> {d['canary']}" for d in s["disagreement_list"]]
    lines.append(
        "policy: holds, `leukoflow rollout promote` will move canary to stable"
        if not r["failures"]
        else "policy: not met: " + "; ".join(r["failures"])
    )
    return "\n".join(lines)


@rollout_app.command("status")
def rollout_status(
    shadow_dir: Path = typer.Option(
        None, "--shadow-dir", help="Shadow records folder (default: $LEUKOFLOW_HOME/requests/shadow)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """The canary's comparison with stable on live traffic: agreement (overall, per class), referral, latency."""
    from components.promote import rollout

    try:
        result = rollout.status(shadow_dir)
    except ValueError as exc:
        fail(str(exc), as_json)
    emit(result, as_json, _human_rollout)


@rollout_app.command("promote")
def rollout_promote(
    force: bool = typer.Option(False, "--force", help="Promote although the policy does not hold (needs --reason)."),
    reason: str = typer.Option("", "--reason", help="Why (recorded with the version in the registry)."),
    shadow_dir: Path = typer.Option(None, "--shadow-dir", help="Shadow records folder."),
    step_wait: float = typer.Option(0.0, "--step-wait-seconds", help="Pause between the two models.config steps."),
    serving_rest: str = typer.Option(
        None, "--serving-rest", help="REST address of a running server to wait on between the steps ('' to skip)."
    ),
    server: str = typer.Option(
        None, "--server", help="gRPC HOST:PORT of a running server to send each models.config step to."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Move canary to stable when the rollout policy holds (components/settings.py ROLLOUT_*); else say what failed."""
    from components.promote import rollout
    from components.promote.executor import PromotionError

    try:
        result = rollout.promote(
            force=force,
            reason=reason,
            directory=shadow_dir,
            step_wait_s=step_wait,
            serving_rest=serving_rest,
            server=server,
        )
    except (ValueError, PromotionError, FileNotFoundError, rollout.RolloutRefused) as exc:
        fail(str(exc), as_json)
    emit(
        result,
        as_json,
        lambda r: f"version {r['version']} is now stable (was {r['previous_stable']}): {r['decision']}, {r['reason']}",
    )


@rollout_app.command("abort")
def rollout_abort(
    reason: str = typer.Option("", "--reason", help="Why (recorded with the version)."),
    shadow_dir: Path = typer.Option(None, "--shadow-dir", help="Shadow records folder."),
    server: str = typer.Option(None, "--server", help="gRPC HOST:PORT of a running server to send the config to."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Remove the canary (label and version) from models.config; stable is untouched."""
    from components.promote import rollout

    try:
        result = rollout.abort(shadow_dir, reason=reason, server=server)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), as_json)
    emit(result, as_json, lambda r: f"canary version {r['version']} removed; serving {r['serving']['labels']}")
