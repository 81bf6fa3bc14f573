"""Whether a drift alert may start a retraining run: only when committed cases give it something new to learn.

A rerun on the data the last run used trains the same model again (it only churns versions). So a drift
alert starts a run only when the committed cases hash differs from the one the last run used; otherwise
it starts nothing and says how many referred images wait for a pathologist's label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

QUEUE_COMMAND = "leukoflow cases queue"


@dataclass(frozen=True)
class RerunDecision:
    start: bool
    reason: str
    cases_hash: str | None  # the committed cases the run would use (recorded with the run)


def decide_rerun(committed_hash: str | None, last_run_hash: str | None, referred_waiting: int) -> RerunDecision:
    """Start a run only for committed cases the last run did not use; else name the waiting referrals."""
    if referred_waiting < 0:
        raise ValueError(f"referred_waiting must be >= 0, got {referred_waiting}")
    if committed_hash and committed_hash != last_run_hash:
        return RerunDecision(True, f"new committed cases (version {committed_hash}) since the last run", committed_hash)
    plural = "image" if referred_waiting == 1 else "images"
    why = "no cases committed yet" if not committed_hash else "no cases committed since the last run"
    return RerunDecision(
        False,
        f"{referred_waiting} referred {plural} waiting for review ({QUEUE_COMMAND}); {why}, so a rerun would "
        "train on the same data and could not differ from the last one",
        committed_hash,
    )


def current(cases_dir: str | Path, kept_dir: str | Path | None) -> tuple[str | None, int]:
    """(the committed cases hash, the number of kept referred images not yet labelled) for decide_rerun."""
    from components.cases.referred import default_kept_dir
    from components.cases.review_queue import referred_queue
    from components.cases.store import read_ledger
    from components.cases.versioning import committed_hash

    labelled = set(read_ledger(Path(cases_dir))["sha256"])
    waiting = len(referred_queue(Path(kept_dir or default_kept_dir()), labelled, limit=10**9))
    return committed_hash(Path(cases_dir)), waiting


def rerun_gate(cases_dir: str | Path, kept_dir: str | Path | None, last_run_hash: str | None) -> RerunDecision:
    """decide_rerun on the cases folder's and the kept referrals' current state."""
    committed, waiting = current(cases_dir, kept_dir)
    return decide_rerun(committed, last_run_hash, waiting)
