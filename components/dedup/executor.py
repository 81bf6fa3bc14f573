"""Find exact and perceptual duplicates, group them transitively, keep one image per group.

Exact duplicates share a sha256; near-duplicates have perceptual hashes (imagehash's
pHash, 64 bits) within `hamming` bits. Pairs are found with multi-index hashing
(pigeonhole: two hashes within t bits agree exactly on at least one of t+1 chunks),
so the search is near-linear rather than all pairs. Pairs are merged transitively
(union-find). A group whose members carry different labels is a label conflict:
all its members are excluded and listed.

Outputs in `out_dir`: `kept.csv` (manifest rows kept, plus `group_id` and `phash`),
`groups.json`, `conflicts.json`, `dedup.json`, `report.md`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from components import atomic_files, domain, settings
from components.perceptual_hash import phash_rgb
from components.validate.parallel import parallel_map

log = logging.getLogger(__name__)

HASH_BITS = 64


def perceptual_hash(data: bytes) -> str:
    """pHash of encoded image bytes, decoded by the domain module like every other step (ImageDecodeError if not)."""
    return phash_rgb(domain.load_rgb(data))


def phash_file(path: str) -> int:
    """The pHash of an image file as an int, or -1 if it cannot be read or decoded."""
    try:
        return int(perceptual_hash(Path(path).read_bytes()), 16)
    except (OSError, domain.ImageDecodeError):
        return -1


def near_pairs(hashes: list[int], max_distance: int, bits: int = HASH_BITS) -> dict[tuple[int, int], int]:
    """All index pairs (i < j) whose hashes differ in at most `max_distance` bits, with the distance.

    Multi-index hashing: split the hash into max_distance + 1 chunks; any pair
    within the distance agrees exactly on some chunk, so only bucket-mates are
    compared (vectorised per bucket). Negative hashes mark unreadable images and
    are never paired.
    """
    import numpy as np

    found: dict[tuple[int, int], int] = {}
    valid = np.array([i for i, h in enumerate(hashes) if h >= 0], dtype=np.int64)
    if max_distance < 0 or len(valid) < 2:
        return found
    values = np.array([hashes[i] for i in valid], dtype=np.uint64)
    parts = min(max_distance + 1, bits)
    bounds = [round(k * bits / parts) for k in range(parts + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        keys = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends):
            if end - start < 2:
                continue
            members = order[start:end]
            block = values[members]
            distances = np.bitwise_count(block[:, None] ^ block[None, :])
            a, b = np.nonzero(np.triu(distances <= max_distance, k=1))
            for x, y, distance in zip(members[a], members[b], distances[a, b]):
                i, j = int(valid[x]), int(valid[y])
                found[(min(i, j), max(i, j))] = int(distance)
    return found


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _keep_key(row: dict) -> tuple:
    # Deterministic: the shortest relative path, then lexicographic (originals before "copy_of_..." names).
    return (len(row["rel_path"]), row["rel_path"])


def find_groups(rows: list[dict], hashes: list[int], hamming: int) -> list[dict]:
    """Groups of 2+ images (exact or near, transitive), each with members, kind, labels and distances."""
    n = len(rows)
    uf = UnionFind(n)
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_sha[row["sha256"]].append(i)
    for members in by_sha.values():
        for j in members[1:]:
            uf.union(members[0], j)
    pairs = near_pairs(hashes, hamming)
    for i, j in pairs:
        uf.union(i, j)

    clusters: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        clusters[uf.find(i)].append(i)
    groups = []
    for members in clusters.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: rows[i]["path"])
        labels = sorted({rows[i]["label"] for i in members})
        exact = len({rows[i]["sha256"] for i in members}) == 1
        distances = (
            [
                [
                    rows[i]["path"],
                    rows[j]["path"],
                    (hashes[i] ^ hashes[j]).bit_count(),
                    rows[i]["sha256"] == rows[j]["sha256"],
                ]
                for a, i in enumerate(members)
                for j in members[a + 1 :]
            ]
            if len(members) <= 50
            else []
        )
        keep = min(members, key=lambda i: _keep_key(rows[i]))
        groups.append(
            {
                "members": [rows[i]["path"] for i in members],
                "labels": labels,
                "kind": "exact" if exact else "near",
                "conflict": len(labels) > 1,
                "keep": None if len(labels) > 1 else rows[keep]["path"],
                "max_distance": max((d[2] for d in distances), default=0),
                "pairs": distances,
                "_indices": members,
            }
        )
    groups.sort(key=lambda g: g["members"][0])
    return groups


def _group_id(sha256: str) -> str:
    return "g" + sha256[:16]


def run_dedup(
    manifest_csv: str | Path,
    out_dir: str | Path,
    hamming: int = settings.DEDUP_HAMMING,
    workers: int | None = None,
    rehash: bool = False,
) -> dict:
    """Deduplicate the valid rows of a validate manifest; write kept.csv and the reports; return the result."""
    import pandas as pd

    if hamming < 0 or hamming > HASH_BITS:
        raise ValueError(f"hamming must be between 0 and {HASH_BITS}, got {hamming}")
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise FileNotFoundError(f"manifest {manifest_csv} not found; run `leukoflow data validate` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = pd.read_csv(manifest_csv, keep_default_na=False, dtype={"sha256": str, "reason": str, "phash": str})
    valid = manifest[(manifest["status"] == "ok") & manifest["label"].isin(domain.CLASS_NAMES)]
    valid = valid.sort_values("path").reset_index(drop=True)
    rows = valid.to_dict("records")

    # validate computes each image's pHash while it decodes it anyway; hash here only what is missing.
    given = [str(r.get("phash") or "") for r in rows]
    if rehash or not all(given):
        hashes = parallel_map(phash_file, [r["path"] for r in rows], workers)
    else:
        hashes = [int(h, 16) for h in given]
    unreadable = [r["path"] for r, h in zip(rows, hashes) if h < 0]
    if unreadable:  # validate said ok, but the file changed since: fail rather than guess
        raise RuntimeError(f"{len(unreadable)} manifest images no longer decode, e.g. {unreadable[0]}; re-run validate")
    groups = find_groups(rows, hashes, hamming)

    group_of = {i: _group_id(rows[i]["sha256"]) for i in range(len(rows))}
    dropped: set[int] = set()
    for g in groups:
        keep_index = min(g["_indices"], key=lambda i: _keep_key(rows[i]))
        g["group_id"] = _group_id(rows[keep_index]["sha256"])
        for i in g["_indices"]:
            group_of[i] = g["group_id"]
            if g["conflict"] or i != keep_index:
                dropped.add(i)
        del g["_indices"]

    kept = valid.copy()
    kept["group_id"] = [group_of[i] for i in range(len(rows))]
    kept["phash"] = [f"{h:016x}" for h in hashes]
    kept = kept[[i not in dropped for i in range(len(rows))]].reset_index(drop=True)
    atomic_files.write_csv(out / "kept.csv", kept)

    conflicts = [g for g in groups if g["conflict"]]
    atomic_files.write_json(out / "groups.json", {"hamming": hamming, "groups": groups})
    atomic_files.write_json(out / "conflicts.json", {"conflicts": conflicts})
    sha_counts = valid["sha256"].value_counts()
    exact_pairs = int(sum(n * (n - 1) // 2 for n in sha_counts if n > 1))
    result = {
        "images": len(rows),
        "kept": int(len(kept)),
        "removed": len(rows) - int(len(kept)),
        "groups": [g["members"] for g in groups],
        "conflicts": [g["members"] for g in conflicts],
        "exact_groups": sum(1 for g in groups if g["kind"] == "exact"),
        "exact_pairs": exact_pairs,
        "near_groups": sum(1 for g in groups if g["kind"] == "near"),
        "hamming": hamming,
        "per_class_kept": {c: int((kept["label"] == c).sum()) for c in domain.CLASS_NAMES},
        "kept_csv": str(out / "kept.csv"),
        "report": str(out / "report.md"),
    }
    atomic_files.write_json(out / "dedup.json", result)
    atomic_files.write_text(out / "report.md", render_report(result, groups, Path(manifest_csv)))
    log.info(
        "dedup: %d images, %d groups (%d exact, %d near), %d conflicts, kept %d",
        len(rows),
        len(groups),
        result["exact_groups"],
        result["near_groups"],
        len(conflicts),
        len(kept),
    )
    return result


def render_report(result: dict, groups: list[dict], manifest_csv: Path) -> str:
    """The markdown report: summary, size and distance histograms, every group."""
    from collections import Counter

    sizes = Counter(len(g["members"]) for g in groups)
    distances = Counter(p[2] for g in groups for p in g["pairs"] if not p[3])
    lines = [
        "# Deduplication report",
        "",
        f"- images considered: {result['images']}",
        f"- kept: {result['kept']} (removed {result['removed']})",
        f"- groups of 2+: {len(groups)} ({result['exact_groups']} exact, {result['near_groups']} with near-duplicates)",
        f"- byte-identical pairs: {result['exact_pairs']}",
        f"- label conflicts (excluded whole): {len(result['conflicts'])}",
        f"- pHash Hamming threshold: {result['hamming']}",
        "",
        "| group size | groups |",
        "|---:|---:|",
        *[f"| {s} | {n} |" for s, n in sorted(sizes.items())],
        "",
        "| pHash distance (non-identical pairs in groups) | pairs |",
        "|---:|---:|",
        *[f"| {d} | {n} |" for d, n in sorted(distances.items())],
        "",
        "| # | kind | size | labels | max distance | kept | members |",
        "|---:|---|---:|---|---:|---|---|",
    ]
    for k, g in enumerate(groups, 1):
        kept = Path(g["keep"]).name if g["keep"] else "none (conflict)"
        members = ", ".join(Path(m).parent.name + "/" + Path(m).name for m in g["members"])
        lines.append(
            f"| {k} | {g['kind']} | {len(g['members'])} | {'/'.join(g['labels'])} | {g['max_distance']} | {kept} | {members} |"
        )
    return "\n".join(lines) + "\n"
