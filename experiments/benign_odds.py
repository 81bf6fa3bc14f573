"""The odds that a quick run meets the Benign recall target, from the recipes' out-of-fold logits.

The target is Benign recall >= 0.98 on the test split, whose 74 Benign smears allow one miss. A recipe's
cross-validation (experiments/recipe_cv.py `--logits`) scores every train + val image once out of fold;
if each test Benign smear is missed independently at the recipe's out-of-fold Benign miss rate p, a run
meets the target with probability P(Binomial(74, p) <= 1). That is a model of the odds, not a measurement:
the test split holds its own hard smears. It is set beside the `make run`s actually counted (README).

Each `--logits NAME=FILE` is one cross-validation (one view). `--ensemble NAME+NAME` averages their
probabilities: what serving several models at once would answer. The Benign smears every set misses and
those only some sets miss are listed by name, to tell a fixed set of hard images from a spread between runs.

    python -m experiments.benign_odds --logits a=/tmp/cv/192px.npz b=/tmp/cv2/192px.npz [--ensemble a+b]
        [--split DIR] [--out benign_odds]

Writes experiments/results/<out>.{json,md}. Seconds; no training.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

RESULTS = harness.results_dir(__file__)
TARGET_RECALL = 0.98  # the Benign recall target on the test split
ODDS_WANTED = 0.95  # "every run", read as at least 19 runs of 20


def allowed_misses(benign: int, recall: float = TARGET_RECALL) -> int:
    """The most Benign misses of `benign` that still meet `recall`."""
    return benign - math.ceil(recall * benign - 1e-9)


def meet_odds(miss_rate: float, benign: int, allowed: int) -> float:
    """P(Binomial(benign, miss_rate) <= allowed)."""
    return sum(math.comb(benign, k) * miss_rate**k * (1 - miss_rate) ** (benign - k) for k in range(allowed + 1))


def rate_for_odds(odds: float, benign: int, allowed: int) -> float:
    """The highest per-smear miss rate whose meet_odds is still at least `odds` (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if meet_odds(mid, benign, allowed) >= odds else (low, mid)
    return low


def _load(spec: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise SystemExit(f"--logits wants NAME=FILE.npz, got {spec!r}")
    if not Path(file).is_file():
        raise SystemExit(
            f"--logits {name}: no file {file} (write one with `python -m experiments.recipe_cv --logits DIR`)"
        )
    from components.train.calibration import softmax

    data = np.load(file)
    paths = data["paths"] if "paths" in data.files else None
    return name, softmax(data["logits"][0]), data["labels"], paths  # [0]: one view, as the quick profile serves


def _paths_from_split(split: Path, labels: np.ndarray) -> np.ndarray:
    from experiments import recipe_cv

    with tempfile.TemporaryDirectory(prefix="benign-odds-") as tmp:
        pooled = recipe_cv.pooled_images(recipe_cv._pool(split, Path(tmp)))
    if not np.array_equal(np.array([label for _, label in pooled]), labels):
        raise SystemExit(f"--split {split}: its train + val images are not those the logits were scored on")
    return np.array([path for path, _ in pooled])


def _test_benign(split: Path | None) -> int:
    if split is not None and (split / "split.json").is_file():
        return int(json.loads((split / "split.json").read_text())["per_class"]["Benign"]["test"])
    return 74  # the split every recipe was measured on


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logits", nargs="+", required=True, help="NAME=FILE.npz, one per cross-validation")
    parser.add_argument("--ensemble", nargs="*", default=[], help="NAME+NAME[+...]: average these sets' probabilities")
    parser.add_argument(
        "--split",
        type=Path,
        default=None,
        help="the split the cross-validations pooled (names the smears of files without paths; "
        "its test split's Benign count)",
    )
    parser.add_argument("--out", default="benign_odds", help="results file stem under experiments/results/")
    args = parser.parse_args(argv)

    from components import atomic_files, domain

    sets, labels, paths = {}, None, None
    for spec in args.logits:
        name, probabilities, set_labels, set_paths = _load(spec)
        if labels is not None and not np.array_equal(labels, set_labels):
            raise SystemExit(f"--logits {name}: its images are not those of the other sets (another split or order)")
        labels, paths = set_labels, set_paths if set_paths is not None else paths
        sets[name] = probabilities
    for combo in args.ensemble:
        members = combo.split("+")
        unknown = [m for m in members if m not in sets]
        if unknown or len(members) < 2:
            raise SystemExit(f"--ensemble {combo}: needs two or more of {', '.join(sets)}")
        sets[combo] = np.mean([sets[m] for m in members], axis=0)
    if paths is None and args.split is not None:
        paths = _paths_from_split(args.split, labels)
    names = [Path(p).stem for p in paths] if paths is not None else [f"#{i}" for i in range(len(labels))]

    benign_index, early_index = domain.CLASS_NAMES.index("Benign"), domain.CLASS_NAMES.index("Early")
    is_benign = labels == benign_index
    test_benign = _test_benign(args.split)
    allowed = allowed_misses(test_benign)
    rows, missed_by = {}, {}
    for name, probabilities in sets.items():
        predicted = probabilities.argmax(axis=1)
        missed = np.flatnonzero(is_benign & (predicted != benign_index))
        rate = len(missed) / int(is_benign.sum())
        rows[name] = {
            "errors": int((predicted != labels).sum()),
            "benign_missed": len(missed),
            "benign_recall": 1 - rate,
            "early_as_benign": int(((labels == early_index) & (predicted == benign_index)).sum()),
            "meet_odds": meet_odds(rate, test_benign, allowed),
            "missed": [names[i] for i in missed],
        }
        missed_by[name] = set(missed.tolist())
    single = [n for n in sets if "+" not in n]
    every = set.intersection(*(missed_by[n] for n in single))
    some = set.union(*(missed_by[n] for n in single)) - every
    needed_rate = rate_for_odds(ODDS_WANTED, test_benign, allowed)
    result = {
        "test_benign": test_benign,
        "allowed_misses": allowed,
        "target_recall": TARGET_RECALL,
        "odds_wanted": ODDS_WANTED,
        "recall_needed_for_odds": 1 - needed_rate,
        "pooled_benign": int(is_benign.sum()),
        "sets": rows,
        "missed_by_every_single_set": sorted(names[i] for i in every),
        "missed_by_some": {names[i]: sum(i in missed_by[n] for n in single) for i in sorted(some)},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }

    lines = [
        "# Benign recall on the test split: the odds of meeting the Benign recall target",
        "",
        f"Out of fold on train + val ({result['pooled_benign']} Benign smears; experiments/recipe_cv.py), one view. "
        f"The test split has {test_benign} Benign smears, so Benign recall >= {TARGET_RECALL} allows {allowed} "
        f"miss(es). 'Odds' is P(at most {allowed} of {test_benign} missed) if each is missed independently at the "
        "set's out-of-fold rate: a model, not a count of runs. "
        f"`{harness.command_line('experiments.benign_odds', argv if argv is not None else [])}`",
        "",
        "| set | errors | Benign missed | Benign recall | Early -> Benign | odds of meeting the target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['errors']} | {r['benign_missed']} | {r['benign_recall']:.4f} | "
            f"{r['early_as_benign']} | {r['meet_odds']:.2f} |"
        )
    lines += [
        "",
        f"Odds of {ODDS_WANTED:.0%} need an out-of-fold Benign recall of at least "
        f"{result['recall_needed_for_odds']:.4f} ({needed_rate * result['pooled_benign']:.1f} misses of "
        f"{result['pooled_benign']}).",
        "",
        f"Missed by every single set ({len(every)}): {', '.join(result['missed_by_every_single_set']) or 'none'}.",
        f"Missed by some ({len(some)}; by how many of the {len(single)}): "
        + (", ".join(f"{k} ({v})" for k, v in result["missed_by_some"].items()) or "none")
        + ".",
    ]
    RESULTS.mkdir(exist_ok=True)
    atomic_files.write_text(RESULTS / f"{args.out}.json", json.dumps(result, indent=2))
    atomic_files.write_text(RESULTS / f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
