"""The case store: labelled images a pathologist vouched for, checked like training data, one ledger.

Layout of a cases folder (one folder, so `dvc add` versions it whole):

    ledger.csv                              one row per case (unique sha256), see LEDGER_COLUMNS
    images/<site>/<Label>/<sha256>.<ext>    cases that may be trained on (class folders, as the data)
    conflicts/<sha256>.<ext>                images given two different labels: kept out of training
    quarantine/<sha256>.<ext>               files that failed validation, with quarantine.csv saying why

Every new image goes through the Great Expectations per-image suite of `leukoflow data validate` (a case
that fails any expectation, warnings included, is quarantined: one image a person vouches for should not
be blank, saturated or tiny), then exact (sha256) and perceptual (pHash within settings.DEDUP_HAMMING) dedup
against the base data and the cases already stored. A duplicate with the same label adds nothing; one with
another label is a conflict. A batch never fails as a whole: each file lands, is skipped, or is quarantined.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from components import atomic_files, domain, settings

log = logging.getLogger(__name__)

LEDGER = "ledger.csv"
QUARANTINE_CSV = "quarantine.csv"
LEDGER_COLUMNS = [
    "sha256",
    "label",
    "site",
    "reviewer",
    "added_at",
    "source_request_id",
    "path",  # relative to the cases folder
    "phash",
    "status",  # "ok" (trainable) or "conflict" (kept out of training)
    "note",
]
QUARANTINE_COLUMNS = ["sha256", "file", "label", "site", "reviewer", "at", "reason"]
SITE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_cases_dir() -> Path:
    """$LEUKOFLOW_HOME/cases"""
    from components.home import home

    return home() / "cases"


def check_site(site: str) -> str:
    """A site name is a folder name: letters, digits, '.', '_', '-' (64 at most), starting with a letter or digit."""
    if not SITE_PATTERN.match(site or ""):
        raise ValueError(
            f"site name {site!r} is not usable: use letters, digits, '.', '_' or '-' (at most 64), "
            "starting with a letter or digit"
        )
    return site


@dataclass
class Candidate:
    """One image offered as a case."""

    path: Path
    label: str
    site: str
    reviewer: str = ""
    source_request_id: str = ""


@contextlib.contextmanager
def locked(cases_dir: Path) -> Iterator[None]:
    """One writer at a time per cases folder (the lock file sits beside it, outside what DVC versions)."""
    cases_dir.mkdir(parents=True, exist_ok=True)
    with open(cases_dir.parent / f".{cases_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_ledger(cases_dir: Path):
    """The ledger as a DataFrame with LEDGER_COLUMNS (empty when there are no cases yet)."""
    import pandas as pd

    path = Path(cases_dir) / LEDGER
    if not path.exists():
        return pd.DataFrame(columns=LEDGER_COLUMNS)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LEDGER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"ledger {path} lacks columns {', '.join(missing)}; it was not written by this version")
    return frame[LEDGER_COLUMNS]


def folder_candidates(folder: Path, site: str, reviewer: str = "") -> tuple[list[Candidate], list[str]]:
    """Every file under FOLDER's class subfolders (Benign/Early/Pre/Pro, any case), and the names ignored."""
    from components.validate.executor import folder_class

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give one holding {'/'.join(domain.CLASS_NAMES)} subfolders")
    candidates, ignored = [], []
    for child in sorted(folder.iterdir()):
        label = folder_class(child.name) if child.is_dir() else None
        if label is None:
            if not child.name.startswith("."):
                ignored.append(child.name)
            continue
        for path in sorted(p for p in child.rglob("*") if p.is_file() and not p.name.startswith(".")):
            candidates.append(Candidate(path, label, site, reviewer))
    if not candidates:
        raise FileNotFoundError(
            f"no images under class subfolders of {folder}; expected subfolders named {', '.join(domain.CLASS_NAMES)}"
        )
    return candidates, ignored


# ---------------------------------------------------------------- the base data's hashes


def base_index(data_dir: Path | None = None, manifest: Path | None = None):
    """sha256, phash, label and rel_path of every valid base image.

    From a validate manifest or dedup kept.csv when given; otherwise the data folder is hashed once
    and cached under $LEUKOFLOW_HOME/cases-base-index, keyed by its file listing (names, sizes, mtimes).
    """
    import pandas as pd

    if manifest is not None:
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        missing = {"sha256", "phash", "label"} - set(frame.columns)
        if missing:
            raise ValueError(f"{manifest} lacks {', '.join(sorted(missing))}: give a validate manifest.csv or kept.csv")
        if "status" in frame.columns:
            frame = frame[frame["status"] == "ok"]
        if "rel_path" not in frame.columns:
            frame["rel_path"] = frame.get("path", "")
        return frame[["sha256", "phash", "label", "rel_path"]].reset_index(drop=True)

    from components.home import default_data_dir, home
    from components.validate.executor import build_manifest

    data_dir = Path(data_dir or default_data_dir())
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"base data folder {data_dir} not found: cases are deduplicated against it. Run `dvc pull`, "
            "or give --data-dir or --base-manifest"
        )
    listing = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        listing.update(f"{path.relative_to(data_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    cache = home() / "cases-base-index" / f"{listing.hexdigest()[:20]}.csv"
    if cache.exists():
        return pd.read_csv(cache, dtype=str, keep_default_na=False)
    log.info("hashing the base data in %s once (cached for later adds)", data_dir)
    frame, _ = build_manifest(data_dir)
    frame = frame[frame["status"] == "ok"][["sha256", "phash", "label", "rel_path"]].reset_index(drop=True)
    atomic_files.write_csv(cache, frame)
    return frame


# ---------------------------------------------------------------- adding cases


def _validate(candidates: list[Candidate]) -> tuple[list[dict], dict[int, list[str]], list[dict]]:
    """Manifest rows of the candidates, the expectations each row failed, and the suite's outcomes."""
    import pandas as pd

    from components.validate.executor import MANIFEST_COLUMNS, inspect_file, run_expectations

    rows = [inspect_file((str(c.path), c.path.name, c.label)) for c in candidates]
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("width", "height", "bytes", "channels"):
        frame[col] = frame[col].astype("Int64")
    with tempfile.TemporaryDirectory(prefix="cases-docs-") as docs:
        outcomes = run_expectations(
            frame, Path(docs), min_per_class=0, decodable_fraction=1.0, class_counts=False, result_format="COMPLETE"
        )
    failed: dict[int, list[str]] = {}
    for outcome in outcomes:
        for index in outcome.pop("unexpected_index_list", []):
            index = index if isinstance(index, int) else next(iter(index.values()), None)
            if isinstance(index, int):
                failed.setdefault(index, []).append(outcome["name"])
    return rows, failed, outcomes


def _hamming(phash: str, others: list[str]) -> list[int]:
    import numpy as np

    if not others:
        return []
    values = np.array([int(h, 16) for h in others], dtype=np.uint64)
    return np.bitwise_count(values ^ np.uint64(int(phash, 16))).tolist()


def _nearest(phash: str, sha256: str, frame) -> tuple[int, int, bool] | None:
    """(row, pHash distance, same bytes) of the first row of `frame` with this sha256, else of the nearest row
    within the dedup threshold, else None."""
    if len(frame) == 0:
        return None
    exact = frame.index[frame["sha256"] == sha256]
    if len(exact):
        return int(exact[0]), 0, True
    distances = _hamming(phash, frame["phash"].tolist())
    best = min(range(len(distances)), key=distances.__getitem__)
    return (int(frame.index[best]), distances[best], False) if distances[best] <= settings.DEDUP_HAMMING else None


def _move_to_conflicts(cases_dir: Path, ledger, row: int) -> None:
    """A case that became a conflict leaves images/ (so no training reads it) for conflicts/."""
    rel = ledger.at[row, "path"]
    if not rel.startswith("images/"):
        return
    source = cases_dir / rel
    target = cases_dir / "conflicts" / Path(rel).name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        source.replace(target)
    ledger.at[row, "path"] = str(target.relative_to(cases_dir))


def _store_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_files.replace_file(target, lambda tmp: shutil.copyfile(source, tmp))


def add_cases(
    candidates: list[Candidate],
    cases_dir: Path,
    base,
    now: datetime | None = None,
) -> dict:
    """Validate, dedup and store `candidates`; returns what happened to each file.

    `base` is `base_index(...)`. Outcomes: added, already a case (same image, same label), duplicate
    of a base image or of a case (exact or near, same label), conflict (another label: the case and
    the image are kept out of training), quarantined (failed validation; the file is kept for audit).
    """
    import pandas as pd

    cases_dir = Path(cases_dir)
    for candidate in candidates:
        check_site(candidate.site)
        candidate.label = domain.canonical_class(candidate.label)
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    outcome = {"added": [], "already": [], "duplicates": [], "conflicts": [], "quarantined": []}
    rows, failed, expectations = _validate(candidates)
    with locked(cases_dir):
        ledger = read_ledger(cases_dir)
        quarantine_rows = []
        for i, (candidate, row) in enumerate(zip(candidates, rows)):
            name = str(candidate.path)
            # An unreadable file fails every expectation after `decodable`; its decode error says it all.
            reasons = (
                [f"not a readable image ({row['reason']})"]
                if row["status"] != "ok"
                else [f"failed expectation {n}" for n in failed.get(i, [])]
            )
            if reasons:
                suffix = candidate.path.suffix.lower() or ".bin"
                if row.get("sha256"):
                    _store_file(candidate.path, cases_dir / "quarantine" / f"{row['sha256']}{suffix}")
                message = "; ".join(reasons)
                quarantine_rows.append(
                    {
                        "sha256": row.get("sha256") or "",
                        "file": candidate.path.name,
                        "label": candidate.label,
                        "site": candidate.site,
                        "reviewer": candidate.reviewer,
                        "at": stamp,
                        "reason": message,
                    }
                )
                outcome["quarantined"].append({"file": name, "reason": message})
                log.warning("quarantined %s: %s", name, message)
                continue
            sha, phash = row["sha256"], row["phash"]
            hit = _nearest(phash, sha, base)
            if hit is not None:
                other = base.loc[hit[0]]
                kind = "exact" if hit[2] else f"near (pHash distance {hit[1]})"
                if other["label"] == candidate.label:
                    outcome["duplicates"].append({"file": name, "of": f"base image {other['rel_path']}", "kind": kind})
                    continue
                note = f"{kind} duplicate of base image {other['rel_path']} labelled {other['label']}"
                ledger.loc[len(ledger)] = _ledger_row(candidate, row, stamp, "conflict", note, cases_dir)
                _store_file(candidate.path, cases_dir / ledger.at[len(ledger) - 1, "path"])
                outcome["conflicts"].append({"file": name, "label": candidate.label, "with": note})
                continue
            hit = _nearest(phash, sha, ledger)
            if hit is not None:
                row_index, distance, same = hit
                other = ledger.loc[row_index]
                if other["label"] == candidate.label:
                    key = "already" if same else "duplicates"
                    outcome[key].append(
                        {
                            "file": name,
                            "of": f"case {other['sha256'][:12]}",
                            "kind": "exact" if same else f"near (pHash distance {distance})",
                        }
                    )
                    continue
                who = f"{candidate.label} by {candidate.reviewer or 'unnamed'} ({candidate.site})"
                earlier = f"{other['label']} by {other['reviewer'] or 'unnamed'} ({other['site']})"
                if same:  # one image, two labels: one case, marked conflict
                    ledger.at[row_index, "status"] = "conflict"
                    ledger.at[row_index, "note"] = f"labelled {earlier}, then {who}"
                    _move_to_conflicts(cases_dir, ledger, row_index)
                else:  # two near-identical images, two labels: both out of training
                    ledger.at[row_index, "status"] = "conflict"
                    ledger.at[row_index, "note"] = f"near duplicate (pHash distance {distance}) labelled {who}"
                    _move_to_conflicts(cases_dir, ledger, row_index)
                    note = (
                        f"near duplicate (pHash distance {distance}) of case {other['sha256'][:12]} labelled {earlier}"
                    )
                    ledger.loc[len(ledger)] = _ledger_row(candidate, row, stamp, "conflict", note, cases_dir)
                    _store_file(candidate.path, cases_dir / ledger.at[len(ledger) - 1, "path"])
                outcome["conflicts"].append(
                    {"file": name, "label": candidate.label, "with": f"case labelled {earlier}"}
                )
                continue
            ledger.loc[len(ledger)] = _ledger_row(candidate, row, stamp, "ok", "", cases_dir)
            _store_file(candidate.path, cases_dir / ledger.at[len(ledger) - 1, "path"])
            outcome["added"].append({"file": name, "sha256": sha, "label": candidate.label, "site": candidate.site})
        atomic_files.write_csv(cases_dir / LEDGER, ledger)
        if quarantine_rows:
            previous = _read_csv(cases_dir / "quarantine" / QUARANTINE_CSV, QUARANTINE_COLUMNS)
            atomic_files.write_csv(
                cases_dir / "quarantine" / QUARANTINE_CSV,
                pd.concat([previous, pd.DataFrame(quarantine_rows, columns=QUARANTINE_COLUMNS)], ignore_index=True),
            )
    counts = {key: len(value) for key, value in outcome.items()}
    return {
        "cases_dir": str(cases_dir),
        "offered": len(candidates),
        "counts": counts,
        **outcome,
        "expectations": [{k: o[k] for k in ("name", "critical", "success", "unexpected_count")} for o in expectations],
        "cases": int((ledger["status"] == "ok").sum()),
    }


def _ledger_row(candidate: Candidate, row: dict, stamp: str, status: str, note: str, cases_dir: Path) -> list[str]:
    suffix = candidate.path.suffix.lower()
    rel = (
        f"images/{candidate.site}/{candidate.label}/{row['sha256']}{suffix}"
        if status == "ok"
        else f"conflicts/{row['sha256']}{suffix}"
    )
    values = {
        "sha256": row["sha256"],
        "label": candidate.label,
        "site": candidate.site,
        "reviewer": candidate.reviewer,
        "added_at": stamp,
        "source_request_id": candidate.source_request_id,
        "path": rel,
        "phash": row["phash"],
        "status": status,
        "note": note,
    }
    return [values[c] for c in LEDGER_COLUMNS]


def _read_csv(path: Path, columns: list[str]):
    import pandas as pd

    if not path.exists():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def summary(cases_dir: Path) -> dict:
    """Counts per site and label (trainable cases), conflicts, quarantined files."""
    cases_dir = Path(cases_dir)
    ledger = read_ledger(cases_dir)
    ok = ledger[ledger["status"] == "ok"]
    per_site = {
        site: {label: int((group["label"] == label).sum()) for label in domain.CLASS_NAMES}
        for site, group in ok.groupby("site")
    }
    quarantine = _read_csv(cases_dir / "quarantine" / QUARANTINE_CSV, QUARANTINE_COLUMNS)
    return {
        "cases_dir": str(cases_dir),
        "cases": int(len(ok)),
        "per_site": per_site,
        "per_label": {label: int((ok["label"] == label).sum()) for label in domain.CLASS_NAMES},
        "conflicts": ledger[ledger["status"] == "conflict"][["sha256", "label", "site", "note"]].to_dict("records"),
        "quarantined": int(len(quarantine)),
        "sha256": ledger["sha256"].tolist(),
    }
