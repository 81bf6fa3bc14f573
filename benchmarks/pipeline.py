"""End-to-end benchmark: the `quick` pipeline on the real data, wall time per step.

    .venv/bin/python -m benchmarks.pipeline [--profile quick] [--data-dir data]

Runs the pipeline locally (kfp.local.SubprocessRunner) with its logs captured, reads each
task's start and finish from the runner's log lines, and writes benchmarks/results/pipeline.json
and pipeline.md. The reference beside each step is the budget for the whole run
(20 minutes on 2 CPU cores for `quick`).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from contextlib import redirect_stdout
from datetime import datetime
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO
from components import home

RESULTS = harness.results_dir(__file__)
BUDGET_S = {"quick": 20 * 60}

_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task '(?P<start>[^']+)'|Task '(?P<end>[^']+)' finished with status (?P<status>\w+))"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def step_times(log: str) -> list[dict]:
    """Per task: wall seconds, from the runner's 'Executing task' / 'finished' lines (tasks may overlap)."""
    open_tasks: dict[str, list[datetime]] = {}
    steps = []
    for raw in log.splitlines():
        match = _LINE.match(_ANSI.sub("", raw).strip())
        if not match:
            continue
        stamp = datetime.strptime(match.group(1)[:15], "%H:%M:%S.%f")
        if match.group("start"):
            open_tasks.setdefault(match.group("start"), []).append(stamp)
        elif match.group("end") and open_tasks.get(match.group("end")):
            started = open_tasks[match.group("end")].pop(0)
            steps.append(
                {
                    "task": match.group("end"),
                    "seconds": round((stamp - started).total_seconds(), 1),
                    "status": match.group("status"),
                }
            )
    return steps


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument(
        "--from-log", help="Read a finished run's full log ($LEUKOFLOW_HOME/runs/<id>/pipeline.log) instead of running."
    )
    args = parser.parse_args(argv)

    if args.from_log:
        log = Path(args.from_log).read_text()
        stamps = [
            datetime.strptime(m.group(1)[:15], "%H:%M:%S.%f")
            for m in map(_LINE.match, (_ANSI.sub("", line).strip() for line in log.splitlines()))
            if m
        ]
        total = (stamps[-1] - stamps[0]).total_seconds() if stamps else float("nan")
        succeeded = "Pipeline 'leukoflow' finished with status SUCCESS" in _ANSI.sub("", log)
        summary = {"status": "SUCCEEDED" if succeeded else "FAILED", "pipeline_root": None, "models": {}}
        steps = step_times(log)
    else:
        from pipelines.local import run_local

        buffer = io.StringIO()
        started = time.time()
        with redirect_stdout(_Tee(buffer, sys.stderr)):
            summary = run_local(
                args.data_dir, profile=args.profile, quiet_stdout=False, verbose=True
            )  # the raw stream: step_times reads it
        total = time.time() - started
        steps = step_times(buffer.getvalue())
    budget = BUDGET_S.get(args.profile)
    result = {
        "profile": args.profile,
        "status": summary["status"],
        "total_s": round(total, 1),
        "budget_s": budget,
        "steps": steps,
        "pipeline_root": home.display(summary["pipeline_root"]) if summary["pipeline_root"] else None,
        "models": {k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"]} for k, v in summary["models"].items()},
    }
    lines = [
        f"### Pipeline end to end ({args.profile} profile, real data)",
        "",
        f"Status {summary['status']}; total {total:.0f} s"
        + (f" (budget {budget} s on 2 CPU cores)" if budget else "")
        + ".",
        "Trainings run two at a time, so step times overlap and do not add up to the total. The runner logs"
        " tasks by name only, so the iterations of the training loop are not told apart here (per-model"
        " training times are in docs/results.md).",
        "",
        "| step | wall time (s) | status |",
        "|---|---|---|",
    ] + [f"| {s['task']} | {s['seconds']} | {s['status']} |" for s in steps]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if summary["status"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
