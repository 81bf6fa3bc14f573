"""The reference profile: image features of the training split, the data the served model learned from.

The features are the served graph's own (components/image_features.py), so the window the request
log collects and the reference are computed by one definition.

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


def write_frame(frame: pd.DataFrame, out_path: str | Path) -> Path:  # noqa: F821
    """Write parquet or CSV (by suffix) atomically: a temp file in the same folder, then rename."""
    out = Path(out_path)
    if out.suffix not in REFERENCE_SUFFIXES:
        raise ValueError(f"reference output must end in .parquet or .csv, got {out.name}")
    if out.suffix == ".parquet":
        atomic_files.replace_file(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_files.write_csv(out, frame)
    return out


def _graph_features(examples: list[dict], saved_model: Path | None, batch: int = 32) -> tuple[list[dict], int]:
    """Per example, the features by the graph's definition; (rows of features, count from stored pixels).

    With `saved_model`, its `serving_default` signature computes them (the served model's own outputs);
    otherwise components.image_features, the function that signature embeds.
    """
    from components import image_features as graph

    if saved_model is not None:
        import tensorflow as tf

        signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
        missing = [o for o in graph.FEATURE_OUTPUTS if o not in signature.structured_outputs]
        if missing:
            raise ValueError(
                f"{saved_model}: serving_default lacks the monitoring outputs {', '.join(missing)} "
                "(exported before components/image_features.py; re-export it)"
            )
        rows: list[dict] = []
        for start in range(0, len(examples), batch):
            chunk = [e["encoded"] for e in examples[start : start + batch]]
            outputs = signature(images=tf.constant(chunk, tf.string))
            values = [outputs[o].numpy() for o in graph.FEATURE_OUTPUTS]
            rows += [{name: float(v[i]) for name, v in zip(graph.FEATURE_NAMES, values)} for i in range(len(chunk))]
        return rows, 0
    rows, fallback = [], 0
    for example in examples:
        try:
            rows.append(graph.encoded_image_features(example["encoded"]))
        except ValueError:
            # The record's pixels were decoded upstream; use them rather than drop the image.
            rows.append(graph.rgb_image_features(example["pixels"]))
            fallback += 1
    return rows, fallback


def build_reference(split_dir: str | Path, out_path: str | Path, saved_model: str | Path | None = None) -> dict:
    """Features of every record in `split_dir/train/*.tfrecord` -> `out_path` (features + label).

    The features are the served graph's (components/image_features.py); give `saved_model` to take them
    from an exported model's own `serving_default` outputs instead (the same ops, run by that model).
    """
    import pandas as pd

    from components import domain, records
    from components.image_features import FEATURE_NAMES

    train_dir = Path(split_dir) / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"no train/ split under {split_dir}")
    started = time.time()
    examples = list(records.iter_examples(train_dir))
    if not examples:
        raise ValueError(f"the train split under {split_dir} holds no records")
    features, skipped = _graph_features(examples, Path(saved_model) if saved_model else None)
    rows = [{LABEL_COLUMN: domain.CLASS_NAMES[e["label"]], **f} for e, f in zip(examples, features)]
    frame = pd.DataFrame(rows, columns=[LABEL_COLUMN, *FEATURE_NAMES])
    out = write_frame(frame, out_path)
    per_class = dict(sorted(Counter(frame[LABEL_COLUMN]).items()))
    result = {
        "reference": str(out),
        "images": len(frame),
        "per_class": per_class,
        "feature_names": list(FEATURE_NAMES),
        "features_from": str(saved_model) if saved_model else "components.image_features",
        "pixels_fallback": skipped,
        "wall_time_s": round(time.time() - started, 1),
    }
    log.info("reference profile: %d images %s -> %s", len(frame), per_class, out)
    return result


def load_reference(path: str | Path) -> pd.DataFrame:  # noqa: F821
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
