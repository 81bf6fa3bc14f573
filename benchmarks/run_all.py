"""`make bench`: every performance benchmark, then one Markdown summary of their tables.

Each benchmark is a module here that writes benchmarks/results/<name>.json and <name>.md;
this runs them one after another (they measure speed, so never in parallel) and joins the
Markdown into benchmarks/results/summary.md. Acceptance checks (checks/) and one-off
experiments (experiments/) are not benchmarks and do not run here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime

from benchmarks import harness
from benchmarks.harness import REPO

RESULTS = harness.results_dir(__file__)
# host_speed first: the machine's speed at the time, beside which the other wall times read.
BENCHMARKS = ("host_speed", "dedup", "input_pipeline", "serving", "abuse", "pipeline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the benchmarks one after another, then join their tables into benchmarks/results/summary.md."
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="join the latest results without rerunning anything"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; expected one of {', '.join(BENCHMARKS)}")
    summary_only = args.summary_only
    names = [] if summary_only else args.names or list(BENCHMARKS)
    failures = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        started = time.time()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=REPO)
        print(f"== {name}: exit {code} in {time.time() - started:.0f} s", flush=True)
        if code:
            failures.append(name)
    host = harness.host_facts()
    parts = [
        "# Benchmark summary",
        "",
        (
            "Joined from each benchmark's latest results (`python -m benchmarks.run_all --summary-only`)"
            if summary_only
            else "Written by `make bench`"
        )
        + f" on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {host['machine']} CPU, {host['cpus']} cores."
        " Each figure stands beside its reference, measured in the same run;"
        " each section says when and under what load its benchmark ran.",
        "",
    ]
    for name in BENCHMARKS:
        md = RESULTS / f"{name}.md"
        parts += [md.read_text().strip(), ""] if md.exists() else [f"### {name}", "", "not run yet", ""]
    if failures:
        parts += [f"Failed this time: {', '.join(failures)}.", ""]
    (RESULTS / "summary.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
