"""Recurring pipeline runs on KFP: `leukoflow pipeline schedule --cron EXPR` calls `create_schedule`.

KFP's scheduler (robfig/cron) reads six fields, seconds first:
`second minute hour day-of-month month day-of-week`, e.g. `0 0 3 * * 1` = Mondays 03:00.
The expression is checked here, before anything reaches the server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# (name, low, high, names usable instead of numbers)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day-of-week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")


def _value(token: str, field: tuple[str, int, int, tuple[str, ...]]) -> int:
    name, low, high, names = field
    upper = token.upper()
    if upper in names:
        return names.index(upper) + (1 if name == "month" else 0)
    if not token.isdigit():
        raise ValueError(
            f"cron {name} field: {token!r} is not a number" + (f" or one of {','.join(names)}" if names else "")
        )
    number = int(token)
    if not low <= number <= high:
        raise ValueError(f"cron {name} field: {number} is outside {low}-{high}")
    return number


def _check_field(text: str, field: tuple[str, int, int, tuple[str, ...]]) -> None:
    name = field[0]
    for part in text.split(","):
        if not part:
            raise ValueError(f"cron {name} field {text!r}: empty list item")
        base, _, step = part.partition("/")
        if step:
            if not step.isdigit() or int(step) == 0:
                raise ValueError(f"cron {name} field {text!r}: step {step!r} must be a positive number")
        if base in ("*", "?"):
            if base == "?" and name not in ("day-of-month", "day-of-week"):
                raise ValueError(f"cron {name} field: '?' is only allowed for day-of-month and day-of-week")
            continue
        start, dash, end = base.partition("-")
        first = _value(start, field)
        if dash:
            last = _value(end, field)
            if last < first:
                raise ValueError(f"cron {name} field {text!r}: range {base} runs backwards")


def validate_cron(expression: str) -> str:
    """The expression, normalised to single spaces, if it is a valid 6-field KFP cron; ValueError otherwise."""
    fields = (expression or "").split()
    if len(fields) == 5:
        raise ValueError(
            f"cron {expression!r} has 5 fields; KFP uses 6 with seconds first, e.g. '0 {' '.join(fields)}'"
        )
    if len(fields) != 6:
        raise ValueError(
            f"cron {expression!r} has {len(fields)} field(s); KFP needs 6: second minute hour day-of-month month day-of-week"
        )
    for text, field in zip(fields, _FIELDS):
        _check_field(text, field)
    return " ".join(fields)


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment called `name`, created when it does not exist yet."""
    try:
        experiment = client.get_experiment(experiment_name=name)
    except ValueError as exc:  # kfp raises ValueError("No experiment is found with name ...")
        if "No experiment" not in str(exc):
            raise
        experiment = client.create_experiment(name=name)
    return experiment.experiment_id


def create_schedule(
    cron: str,
    experiment: str,
    package_path: str,
    host: str | None = None,
    job_name: str = "leukoflow-scheduled",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create a KFP recurring run of the compiled pipeline; returns its id and settings."""
    import kfp

    cron = validate_cron(cron)
    if not experiment or not experiment.strip():
        raise ValueError("experiment name must not be empty")
    if not _JOB_NAME.match(job_name or ""):
        raise ValueError(f"job name {job_name!r}: use letters, digits, space, '.', '_' or '-' (at most 128)")
    package = Path(package_path)
    if not package.is_file():
        raise FileNotFoundError(f"pipeline package not found: {package}; run `leukoflow pipeline compile` first")

    client = kfp.Client(host=host)
    exp_id = experiment_id(client, experiment)
    recurring = client.create_recurring_run(
        experiment_id=exp_id,
        job_name=job_name,
        description=f"leukoflow pipeline on cron '{cron}'",
        cron_expression=cron,
        pipeline_package_path=str(package),
        params=params or {},
        max_concurrency=1,  # never two training runs at once
        no_catchup=True,  # a scheduler outage does not queue a burst of runs
        enabled=True,
    )
    return {
        "recurring_run_id": getattr(recurring, "recurring_run_id", None),
        "job_name": job_name,
        "cron": cron,
        "experiment": experiment,
        "experiment_id": exp_id,
        "package": str(package),
        "host": host,
    }
