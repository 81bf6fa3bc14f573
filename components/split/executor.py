"""Split the deduplicated images into train/val/test: stratified by class, seeded, group-aware.

The unit of assignment is a group, so every member of a group lands in one split (no leakage), and
within each class the groups are shuffled with the seed and cut at the cumulative 70/15/15 image
counts. By default (`by_slide`) a group is a pseudo-slide (components/split/slides.py: images whose
surroundings of the leukocytes look alike, duplicate groups kept whole), so a slide's images do not sit
in train and in test; `by_slide=False` groups by duplicates alone (dedup's `group_id`), the image-level
split. The preprocessed records are then routed into `out_dir/{train,val,test}/` shards.

Outputs in `out_dir`: `split.csv` (id, path, label, group_id, dedup_group, split), `counts.csv`,
`counts.md`, `split.json`, and the shards.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from components import atomic_files, domain, records, settings

log = logging.getLogger(__name__)

# Group orders drawn per class when splitting by pseudo-slide, the nearest to the ratios kept. On the public data
# one order gave Benign 327/124/41 (66/25/8%); the best of 256 comes within a few images of 70/15/15.
SLIDE_SPLIT_TRIES = 256


class SplitError(ValueError):
    """The data cannot be split as asked (a class too small, bad ratios, leakage)."""


def assign_splits(frame, ratios: tuple[float, float, float], seed: int, tries: int = 1):
    """Return a copy of `frame` (label, group_id, path) with a `split` column.

    Deterministic for a given seed and set of rows, whatever their input order. With `tries` > 1 each class
    draws that many seeded group orders and keeps the one whose split sizes come nearest the ratios (the
    first draw is the one `tries=1` uses): pseudo-slides hold dozens of images, and one order can put a
    quarter of a class in val and a twelfth in test.
    """
    import numpy as np

    if len(ratios) != 3 or any(r <= 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise SplitError(f"ratios must be three positive numbers summing to 1, got {ratios}")
    if tries < 1:
        raise SplitError(f"tries must be at least 1, got {tries}")
    frame = frame.sort_values("path").reset_index(drop=True).copy()
    labels_per_group = frame.groupby("group_id")["label"].nunique()
    mixed = labels_per_group[labels_per_group > 1]
    if not mixed.empty:
        raise SplitError(f"groups with more than one label (run dedup, which excludes them): {list(mixed.index)[:5]}")

    needed = math.ceil(1.0 / min(ratios))  # so the smallest split gets at least one group
    split_of: dict[str, str] = {}
    cut = np.cumsum(ratios)[:2]
    for index, label in enumerate(domain.CLASS_NAMES):
        rows = frame[frame["label"] == label]
        groups = sorted(rows["group_id"].unique())
        if len(groups) < needed:
            raise SplitError(
                f"class {label} has {len(rows)} images in {len(groups)} duplicate groups; a "
                f"{'/'.join(str(round(r * 100)) for r in ratios)} split needs at least {needed} groups per class"
            )
        sizes = rows.groupby("group_id").size()
        total = len(rows)
        best, best_error = None, math.inf
        for attempt in range(tries):
            rng = np.random.default_rng([seed, index] if attempt == 0 else [seed, index, attempt])
            order = [groups[i] for i in rng.permutation(len(groups))]
            assigned, seen = {}, 0
            for group in order:
                size = int(sizes[group])
                position = (seen + size / 2) / total  # the group's midpoint along the class's image count
                assigned[group] = records.SPLITS[int(np.searchsorted(cut, position, side="right"))]
                seen += size
            counts = {s: sum(int(sizes[g]) for g, v in assigned.items() if v == s) for s in records.SPLITS}
            if not all(counts.values()):
                continue
            error = sum(abs(counts[s] - r * total) for s, r in zip(records.SPLITS, ratios))
            if error < best_error:
                best, best_error = assigned, error
        if best is None:
            raise SplitError(f"class {label} ({len(rows)} images) is too small: no image left for some split")
        split_of.update(best)
    frame["split"] = frame["group_id"].map(split_of)
    return frame


def check_no_leakage(frame, hamming: int = settings.DEDUP_HAMMING) -> None:
    """Raise SplitError if a duplicate group, a content hash, or a near-duplicate pair spans two splits.

    The near-duplicate check recomputes pairs from the pHashes (when kept.csv has
    them) instead of trusting the group ids.
    """
    from components.dedup.executor import near_pairs

    for column in ("group_id", "id") + (("dedup_group",) if "dedup_group" in frame.columns else ()):
        spread = frame.groupby(column)["split"].nunique()
        leaked = spread[spread > 1]
        if not leaked.empty:
            raise SplitError(f"leakage: {len(leaked)} {column} values in more than one split, e.g. {leaked.index[0]}")
    if "phash" in frame.columns and frame["phash"].astype(bool).all():
        hashes = [int(h, 16) for h in frame["phash"]]
        splits = frame["split"].tolist()
        paths = frame["path"].tolist()
        crossing = [(i, j, d) for (i, j), d in near_pairs(hashes, hamming).items() if splits[i] != splits[j]]
        if crossing:
            i, j, d = crossing[0]
            raise SplitError(
                f"leakage: {len(crossing)} near-duplicate pairs (pHash distance <= {hamming}) span "
                f"two splits, e.g. {paths[i]} ({splits[i]}) and {paths[j]} ({splits[j]}, distance {d})"
            )


def counts_table(frame):
    """Per-class counts per split, with totals (a DataFrame: label, train, val, test, total)."""
    import pandas as pd

    table = pd.crosstab(frame["label"], frame["split"]).reindex(
        index=list(domain.CLASS_NAMES), columns=list(records.SPLITS), fill_value=0
    )
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table.reset_index().rename(columns={"index": "label"})


def counts_markdown(table) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def route_records(preprocessed_dir: str | Path, out_dir: Path, split_of: dict[str, str], num_shards: int) -> dict:
    """Copy each preprocessed record into its split's shards; every id must be found exactly once."""
    import tensorflow as tf

    from components.preprocess.executor import ShardWriter

    totals = {s: sum(1 for v in split_of.values() if v == s) for s in records.SPLITS}
    writers = {s: ShardWriter(out_dir / s, num_shards, totals[s]) for s in records.SPLITS}
    spec = {"image/id": tf.io.FixedLenFeature([], tf.string)}
    seen: set[str] = set()
    ignored = 0
    for path in records.shard_paths(preprocessed_dir):
        for raw in tf.data.TFRecordDataset(path):
            image_id = tf.io.parse_single_example(raw, spec)["image/id"].numpy().decode()
            if image_id not in split_of:
                ignored += 1
                continue
            if image_id in seen:
                raise SplitError(f"record {image_id} appears twice in {preprocessed_dir}")
            seen.add(image_id)
            writers[split_of[image_id]].write(raw.numpy())
    shards = {s: w.close() for s, w in writers.items()}
    missing = set(split_of) - seen
    if missing:
        raise SplitError(
            f"{len(missing)} images of the split have no preprocessed record in {preprocessed_dir} "
            f"(e.g. {sorted(missing)[0]}); re-run preprocess on the same kept.csv"
        )
    if ignored:
        log.warning("%d preprocessed records are not in the kept manifest and were not routed", ignored)
    return shards


def context_features_by_id(frame, preprocessed_dir: str | Path | None):
    """{image id: context features} of each image as its file holds it (the records keep the file's bytes)."""
    from components.split.slides import context_features

    wanted = set(frame["id"])
    features = {}
    if preprocessed_dir:
        for example in records.iter_examples(preprocessed_dir):
            if example["id"] in wanted:
                features[example["id"]] = context_features(domain.load_rgb(example["encoded"]))
    for image_id, path in zip(frame["id"], frame["path"]):
        if image_id not in features:
            features[image_id] = context_features(domain.load_rgb(path))
    return features


def slide_groups(frame, preprocessed_dir: str | Path | None, ratios: tuple[float, float, float]):
    """`frame` with group_id replaced by its pseudo-slide and the duplicate group kept as dedup_group."""
    import numpy as np

    from components.split import slides

    features = context_features_by_id(frame, preprocessed_dir)
    # Twice the groups the smallest split needs: pseudo-slides differ in size, and with the bare minimum one
    # large group can take a small class's whole test share (the real data's classes make 14-27 anyway).
    ids = slides.cluster_slides(
        np.stack([features[i] for i in frame["id"]]), frame["label"].tolist(), 2 * math.ceil(1.0 / min(ratios))
    )
    frame = frame.copy()
    frame["dedup_group"] = frame["group_id"]
    frame["group_id"] = slides.merge_duplicate_groups(ids, frame["dedup_group"].tolist())
    return frame


def run_split(
    kept_csv: str | Path,
    preprocessed_dir: str | Path | None,
    out_dir: str | Path,
    ratios: tuple[float, float, float] = settings.SPLIT_RATIOS,
    seed: int = settings.SEED,
    num_shards: int = settings.NUM_SHARDS,
    hamming: int | None = None,
    by_slide: bool = settings.SPLIT_BY_SLIDE,
) -> dict:
    """Split kept.csv (by pseudo-slide unless `by_slide` is False), check for leakage, write the manifests and
    (if given) route the records."""
    import pandas as pd

    kept_csv = Path(kept_csv)
    if not kept_csv.is_file():
        raise FileNotFoundError(f"{kept_csv} not found; run `leukoflow data dedup` first")
    kept = pd.read_csv(kept_csv, dtype={"sha256": str, "group_id": str, "phash": str}, keep_default_na=False)
    if "group_id" not in kept.columns:
        raise SplitError(f"{kept_csv} has no group_id column; it must be dedup's kept.csv")
    if hamming is None:  # check leakage at the threshold dedup used, recorded beside kept.csv
        dedup_json = kept_csv.parent / "dedup.json"
        hamming = json.loads(dedup_json.read_text())["hamming"] if dedup_json.is_file() else settings.DEDUP_HAMMING
    columns = ["sha256", "path", "label", "group_id"] + (["phash"] if "phash" in kept.columns else [])
    frame = kept[columns].rename(columns={"sha256": "id"})
    if by_slide:
        frame = slide_groups(frame, preprocessed_dir, tuple(ratios))
    else:
        frame["dedup_group"] = frame["group_id"]
    frame = assign_splits(frame, tuple(ratios), seed, tries=SLIDE_SPLIT_TRIES if by_slide else 1)
    check_no_leakage(frame, hamming)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = frame[["id", "path", "label", "group_id", "dedup_group", "split"]]
    atomic_files.write_csv(out / "split.csv", frame.sort_values(["split", "path"]))
    table = counts_table(frame)
    atomic_files.write_csv(out / "counts.csv", table)
    markdown = counts_markdown(table)
    atomic_files.write_text(out / "counts.md", markdown)

    shards = (
        route_records(preprocessed_dir, out, dict(zip(frame["id"], frame["split"])), num_shards)
        if preprocessed_dir
        else {}
    )
    if preprocessed_dir and (Path(preprocessed_dir) / "preprocess.json").is_file():
        # Beside the shards, so training knows their image size and the brightness method.
        (out / "preprocess.json").write_text((Path(preprocessed_dir) / "preprocess.json").read_text())
    by_split = table.set_index("label")
    result = {
        "images": int(len(frame)),
        "seed": seed,
        "ratios": list(ratios),
        "counts": {s: int(by_split.loc["total", s]) for s in records.SPLITS},
        "per_class": {c: {s: int(by_split.loc[c, s]) for s in records.SPLITS} for c in domain.CLASS_NAMES},
        "groups": int(frame["group_id"].nunique()),
        "grouping": "pseudo-slides (components/split/slides.py)" if by_slide else "duplicate groups (image-level)",
        "duplicate_groups": int(frame["dedup_group"].nunique()),
        "leakage_check": f"passed: no duplicate group, content hash or pHash pair within {hamming} bits in two splits",
        "split_csv": str(out / "split.csv"),
        "counts_md": str(out / "counts.md"),
        "table": markdown,
        "shards": shards,
    }
    atomic_files.write_json(out / "split.json", result)
    log.info("split: %s", result["counts"])
    return result
