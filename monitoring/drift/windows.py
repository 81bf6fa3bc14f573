"""The windows a drift check compares: served requests from the request log, or a folder of images; and the
reference profile (and out-of-distribution rate) of the model version that served them."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from components.host_features import FEATURE_NAMES
from monitoring.drift.decision import CLASS_COLUMN

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '24h', '7d', '2w' -> timedelta; a clear error otherwise."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"cannot read duration {text!r}; use a number and a unit s/m/h/d/w, e.g. 24h")
    value = float(match.group(1))
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return timedelta(**{_UNITS[match.group(2).lower()]: value})


def window_from_log(directory: str | Path, since: timedelta | None, version: str | None = None) -> pd.DataFrame:  # noqa: F821
    """The request log's rows (features + predicted class as `class`), optionally one model version only."""
    from monitoring.request_log import read_requests

    frame = read_requests(directory, since)
    skipped = frame.attrs.get("skipped_lines", 0)
    if version is not None:
        frame = frame[frame["version"].astype(str) == str(version)]
    frame = frame.dropna(subset=list(FEATURE_NAMES), how="any")
    frame = frame.rename(columns={"predicted_label": CLASS_COLUMN}).reset_index(drop=True)
    frame.attrs["skipped_lines"] = skipped
    return frame


def window_from_images(directory: str | Path) -> pd.DataFrame:  # noqa: F821
    """Features of every image under `directory`; `class` from a parent folder named like a class, if any."""
    import pandas as pd

    from components import domain
    from components.image_features import encoded_image_features

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder not found: {directory}")
    rows, unreadable = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in domain.IMAGE_SUFFIXES):
        try:
            features = encoded_image_features(path.read_bytes())  # as the served graph computes them
        except ValueError:
            unreadable += 1
            continue
        label = None
        for part in reversed(path.relative_to(directory).parts[:-1]):
            try:
                label = domain.canonical_class(part)
                break
            except ValueError:
                continue
        rows.append({CLASS_COLUMN: label, **features})
    if unreadable:
        log.warning("skipped %d unreadable image(s) under %s", unreadable, directory)
    frame = pd.DataFrame(rows, columns=[CLASS_COLUMN, *FEATURE_NAMES])
    if frame[CLASS_COLUMN].isna().any():  # a partly labelled folder: compare without class information
        frame = frame.drop(columns=[CLASS_COLUMN])
    return frame


def reference_frame(path: str | Path) -> pd.DataFrame:  # noqa: F821
    """A reference file with its label column renamed to `class`."""
    from components.reference.executor import LABEL_COLUMN, load_reference

    frame = load_reference(path)
    if LABEL_COLUMN in frame.columns:
        frame = frame.rename(columns={LABEL_COLUMN: CLASS_COLUMN})
    return frame


def reference_ood_rate(model_dir: str | Path, version: str | None) -> float | None:
    """The served version's `ood_val_referral_rate` from its metadata; None for an older model or no version."""
    from components import model_metadata

    if version is None:
        return None
    meta = model_metadata.read_or_none(Path(model_dir) / str(version))
    return meta.ood_val_referral_rate if meta is not None else None


def resolve_reference(explicit: str | Path | None, model_dir: str | Path, version: str | None = None) -> Path:
    """An explicit --reference, else the reference stored with the model version (see docs/monitoring.md)."""
    from components.reference.executor import find_reference

    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"reference file not found: {path}")
        return path
    found = find_reference(model_dir, version)
    if found is None:
        where = f"{model_dir}/{version}" if version is not None else f"any version under {model_dir}"
        raise FileNotFoundError(
            f"no reference profile in {where} (assets.extra/reference_features.parquet); pass --reference PATH"
        )
    return found
