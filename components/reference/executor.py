"""The reference profile: image features of the training split, the data the served model learned from.

The pipeline's reference step calls `build_reference(split_dir, out_path)`; promotion
copies the file into the model version as `assets.extra/reference_features.parquet`,
so the monitor always compares a window against the served version's own training data.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from components import atomic_files

log = logging.getLogger(__name__)

# Where a model version keeps its reference (parquet preferred; CSV accepted).
REFERENCE_BASENAME = "reference_features"
REFERENCE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv")
LABEL_COLUMN = "label"


def write_frame(frame: "pd.DataFrame", out_path: str | Path) -> Path:  # noqa: F821
    """Write parquet or CSV (by suffix) atomically: a temp file in the same folder, then rename."""
    out = Path(out_path)
    if out.suffix not in REFERENCE_SUFFIXES:
        raise ValueError(f"reference output must end in .parquet or .csv, got {out.name}")
    if out.suffix == ".parquet":
        atomic_files.replace_file(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_files.write_csv(out, frame)
    return out


def build_reference(split_dir: str | Path, out_path: str | Path) -> dict:
    """Features of every record in `split_dir/train/*.tfrecord` -> `out_path` (features + label)."""
    import pandas as pd

    from components import domain, records
    from components.host_features import FEATURE_NAMES, image_features

    train_dir = Path(split_dir) / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"no train/ split under {split_dir}")
    started = time.time()
    rows: list[dict] = []
    skipped = 0
    for example in records.iter_examples(train_dir):
        try:
            rgb = domain.load_rgb(example["encoded"])
        except domain.ImageDecodeError:
            # The record's pixels were decoded upstream; fall back to them rather than drop the image.
            rgb = example["pixels"]
            skipped += 1
        rows.append({LABEL_COLUMN: domain.CLASS_NAMES[example["label"]], **image_features(rgb)})
    if not rows:
        raise ValueError(f"the train split under {split_dir} holds no records")
    frame = pd.DataFrame(rows, columns=[LABEL_COLUMN, *FEATURE_NAMES])
    out = write_frame(frame, out_path)
    per_class = dict(sorted(Counter(frame[LABEL_COLUMN]).items()))
    result = {
        "reference": str(out),
        "images": len(frame),
        "per_class": per_class,
        "feature_names": list(FEATURE_NAMES),
        "pixels_fallback": skipped,
        "wall_time_s": round(time.time() - started, 1),
    }
    log.info("reference profile: %d images %s -> %s", len(frame), per_class, out)
    return result


def load_reference(path: str | Path) -> "pd.DataFrame":  # noqa: F821
    """A reference file as a DataFrame with every feature (and `label` when present); clear errors otherwise."""
    import pandas as pd

    from components.host_features import FEATURE_NAMES

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [name for name in FEATURE_NAMES if name not in frame.columns]
    if missing:
        raise ValueError(f"reference {path} lacks feature column(s): {', '.join(missing)}")
    if frame.empty:
        raise ValueError(f"reference {path} is empty")
    return frame


def version_reference(version_dir: str | Path) -> Path | None:
    """`<version_dir>/assets.extra/reference_features.{parquet,csv}` when present."""
    for suffix in REFERENCE_SUFFIXES:
        candidate = Path(version_dir) / "assets.extra" / f"{REFERENCE_BASENAME}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_reference(model_dir: str | Path, version: int | str | None = None) -> Path | None:
    """The reference of `model_dir/<version>/`, or of the newest version that has one when version is None."""
    model_dir = Path(model_dir)
    if version is not None:
        return version_reference(model_dir / str(version))
    if not model_dir.is_dir():
        return None
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for version_dir in reversed(versions):
        found = version_reference(version_dir)
        if found:
            return found
    return None
