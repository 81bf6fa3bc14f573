"""`leukoflow cases`: add labelled cases, version them with DVC, list them, and the review queue."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from components import domain
from components.cli_output import emit, fail
from components.home import display

app = typer.Typer(add_completion=False, help="Pathologist cases: add, commit (DVC), list, and the review queue.")

CASES_DIR_HELP = "The cases folder (default: $LEUKOFLOW_HOME/cases); inside a DVC repository to commit it."


def _cases_dir(given: Optional[Path]) -> Path:
    from components.cases.store import default_cases_dir

    return Path(given) if given else default_cases_dir()


def _human_add(result: dict) -> str:
    counts = result["counts"]
    lines = [
        f"{result['offered']} image(s) offered: {counts['added']} added, {counts['already']} already a case, "
        f"{counts['duplicates']} duplicate(s), {counts['conflicts']} conflict(s), {counts['quarantined']} quarantined"
    ]
    lines += [f"  duplicate: {d['file']} ({d['kind']} of {d['of']})" for d in result["duplicates"]]
    lines += [
        f"  CONFLICT: {c['file']} labelled {c['label']} vs {c['with']} (kept out of training)"
        for c in result["conflicts"]
    ]
    lines += [f"  QUARANTINED: {q['file']}: {q['reason']}" for q in result["quarantined"]]
    lines.append(
        f"{result['cases']} trainable case(s) in {display(result['cases_dir'])}; `leukoflow cases commit` versions them"
    )
    return "\n".join(lines)


@app.command("add")
def add(
    folder: Optional[Path] = typer.Argument(None, help=f"A folder with {'/'.join(domain.CLASS_NAMES)} subfolders."),
    site: Optional[str] = typer.Option(None, "--site", help="Where the images come from (hospital, microscope)."),
    reviewer: str = typer.Option("", "--reviewer", help="Who labelled them."),
    request_id: Optional[str] = typer.Option(None, "--request-id", help="Label a kept referred image instead."),
    label: Optional[str] = typer.Option(
        None, "--label", help=f"With --request-id: one of {', '.join(domain.CLASS_NAMES)}."
    ),
    cases_dir: Optional[Path] = typer.Option(None, "--cases-dir", help=CASES_DIR_HELP),
    kept_dir: Optional[Path] = typer.Option(
        None,
        "--kept-dir",
        help="With --request-id: the server's --keep_referred_images folder (default: $LEUKOFLOW_HOME/referred).",
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="The base data, for dedup (default: data/)."),
    base_manifest: Optional[Path] = typer.Option(
        None,
        "--base-manifest",
        help="A validate manifest.csv or dedup kept.csv of the base data, instead of hashing it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Add labelled images as cases: validated and deduplicated like training data; bad files are quarantined."""
    from components.cases import referred, store

    try:
        if request_id is not None:
            if folder is not None:
                raise ValueError("give a FOLDER or --request-id, not both")
            if not label:
                raise ValueError("--request-id needs --label")
            entry = referred.ReferredImages(kept_dir or referred.default_kept_dir()).find(request_id)
            candidates = [
                store.Candidate(
                    entry["path"],
                    domain.canonical_class(label),
                    store.check_site(site or referred.SERVED_SITE),
                    reviewer,
                    source_request_id=request_id,
                )
            ]
        else:
            if folder is None:
                raise ValueError(f"give a FOLDER with {'/'.join(domain.CLASS_NAMES)} subfolders, or --request-id")
            if not site:
                raise ValueError("--site is required with a FOLDER (the hospital or microscope the images come from)")
            candidates, ignored = store.folder_candidates(folder, store.check_site(site), reviewer)
            if ignored:
                typer.echo(f"ignored (not a class folder): {', '.join(ignored)}", err=True)
        base = store.base_index(data_dir, base_manifest)
        result = store.add_cases(candidates, _cases_dir(cases_dir), base)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        fail(str(exc).strip("'\""), as_json)
        return
    emit(result, as_json, _human_add)


def _human_list(result: dict) -> str:
    lines = [f"{result['cases']} trainable case(s) in {display(result['cases_dir'])}"]
    for site, counts in result["per_site"].items():
        lines.append(f"  {site}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    lines += [f"  CONFLICT {c['sha256'][:12]} ({c['site']}): {c['note']}" for c in result["conflicts"]]
    if result["quarantined"]:
        lines.append(f"  {result['quarantined']} file(s) quarantined (quarantine/quarantine.csv)")
    committed = result["committed_hash"] or "never"
    lines.append(
        f"committed: {committed}; {result['uncommitted']} ledger entries (cases or conflicts) not committed yet"
    )
    return "\n".join(lines)


@app.command("list")
def list_cases(
    cases_dir: Optional[Path] = typer.Option(None, "--cases-dir", help=CASES_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Counts per site and label, conflicts, uncommitted cases, and the committed (DVC) hash."""
    from components.cases.versioning import listing

    try:
        result = listing(_cases_dir(cases_dir))
    except ValueError as exc:
        fail(str(exc), as_json)
        return
    emit(result, as_json, _human_list)


@app.command("commit")
def commit(
    cases_dir: Optional[Path] = typer.Option(None, "--cases-dir", help=CASES_DIR_HELP),
    remote: Optional[str] = typer.Option(None, "--remote", help="DVC remote to push to (default: the repository's)."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """`dvc add` and `dvc push` the cases folder: a new data version a rerun can use."""
    from components.cases.versioning import NotVersioned
    from components.cases.versioning import commit as run_commit

    try:
        result = run_commit(_cases_dir(cases_dir), remote)
    except (NotVersioned, ValueError) as exc:
        fail(str(exc), as_json)
        return
    emit(
        result,
        as_json,
        lambda r: (
            f"cases {'committed' if r['changed'] else 'unchanged'}: {r['hash']} ({r['cases']} cases, "
            f"{r['dvc_file']}); commit that file to git to record the version"
        ),
    )


def _human_queue(result: dict) -> str:
    lines = [
        f"{result['referred_waiting']} referred image(s) waiting for review (kept in {display(result['kept_dir'])})"
    ]
    for r in result["referred"]:
        answer = "/".join(r["prediction_set"] or []) or "no class"
        lines.append(
            f"  {r['priority']:.2f}  request {r['request_id']}  ood {r['ood_score']}  set {answer}  {r['path']}"
        )
    if result["oof_logits"]:
        lines.append(f"{len(result['suspect_labels'])} training image(s) whose label looks wrong:")
        for r in result["suspect_labels"]:
            lines.append(
                f"  {r['path']}: labelled {r['label']}, read as {r['read_as']} "
                f"(flagged by {r['flagged_by']}/{r['recipes']} recipes, self-confidence {r['self_confidence']:.3f})"
            )
    else:
        lines.append(
            "training labels not checked: give --oof-logits (experiments/recipe_cv.py --logits DIR writes them)"
        )
    lines.append("label one: leukoflow cases add --request-id ID --label L [--site S] [--reviewer R]")
    return "\n".join(lines)


@app.command("queue")
def queue(
    kept_dir: Optional[Path] = typer.Option(
        None, "--kept-dir", help="The server's --keep_referred_images folder (default: $LEUKOFLOW_HOME/referred)."
    ),
    cases_dir: Optional[Path] = typer.Option(None, "--cases-dir", help=CASES_DIR_HELP),
    oof_logits: list[Path] = typer.Option(
        [],
        "--oof-logits",
        help="Out-of-fold logits (.npz) from experiments/recipe_cv.py --logits; repeat for several recipes.",
    ),
    views: Optional[int] = typer.Option(None, "--views", help="Which view count's logits (default: the most)."),
    limit: int = typer.Option(50, "--limit", min=1, help="Rows per list."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """What to label first: kept referrals (most out of distribution, most ambiguous) and suspect training labels."""
    from components.cases.referred import default_kept_dir
    from components.cases.review_queue import review_queue

    try:
        result = review_queue(kept_dir or default_kept_dir(), _cases_dir(cases_dir), oof_logits, views, limit)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), as_json)
        return
    emit(result, as_json, _human_queue)
