"""The CNN of each profile under another lab's light: validation and test side by side, from real trainings.

Each entry is a training (`leukoflow train` or a pipeline's train step) and its evaluation (`leukoflow
evaluate` or a pipeline's evaluate step) on the same split. From them, one row: the training's epochs and
time (train.json), its worst plausible perturbation on the **validation** split (scored here as
experiments/cnn_robustness.py scores, through the Keras graph) and on the **test** split (the evaluation's
metrics.json, through the serving signature, as the gate reads it).

    leukoflow train --model cnn --profile full --split SPLIT --out TRAINED
    leukoflow evaluate --model TRAINED --split SPLIT --out EVALUATED
    python -m experiments.cnn_profiles --split SPLIT --entry "full" TRAINED EVALUATED \
        --entry "quick (pipeline)" RUN/for-loop-1-iteration-0/train-op/trained RUN/.../evaluate-op/evaluation

Writes experiments/results/cnn_profiles.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import harness

RESULTS = harness.results_dir(__file__)


def row(label: str, trained: Path, evaluated: Path, split: Path) -> dict:
    from components.evaluate.robustness import plausible
    from experiments.cnn_robustness import val_accuracies

    train = json.loads((trained / "train.json").read_text())
    metrics = json.loads((evaluated / "metrics.json").read_text())
    if metrics.get("saved_model") and Path(metrics["saved_model"]).resolve().parent != trained.resolve():
        raise ValueError(f"{evaluated} evaluated {metrics['saved_model']}, not the training in {trained}")
    val = val_accuracies(train["keras_model"], split, train["config"]["image_size"])
    worst_val = min(plausible(), key=val.get)
    return {
        "label": label,
        "trained": str(trained),
        "evaluated": str(evaluated),
        "image_size": train["config"]["image_size"],
        "epochs": train["config"]["epochs"],
        "epochs_run": train["epochs_run"],
        "best_epoch": train["best_epoch"],
        "train_s": train["train_time_s"],
        "val_clean": val["clean"],
        "val_worst": val[worst_val],
        "val_worst_name": worst_val,
        "val_grayscale": val["grayscale"],
        "test_clean": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_worst": metrics["robustness_worst"],
        "test_worst_name": metrics["robustness_worst_name"],
        "test_grayscale": metrics["robustness"]["grayscale"],
        "val": val,
        "test": metrics["robustness"],
    }


def write(result: dict) -> None:
    from components import atomic_files

    atomic_files.write_text(RESULTS / "cnn_profiles.json", json.dumps(result, indent=1))
    lines = [
        "# The CNN of each profile under another lab's light",
        "",
        f"Measured {result['measured']} on {result['split']}; {result['note']}".strip(),
        "",
        "| CNN | input | epochs run (best) | training (s) | val clean | val worst plausible (which) | "
        "test clean / macro-F1 | test worst plausible (which) | grayscale val / test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {r['image_size']} px | {r['epochs_run']} of {r['epochs']} ({r['best_epoch']}) | "
            f"{r['train_s']:.0f} | {r['val_clean']:.2%} | {r['val_worst']:.2%} ({r['val_worst_name']}) | "
            f"{r['test_clean']:.2%} / {r['test_macro_f1']:.4f} | {r['test_worst']:.2%} ({r['test_worst_name']}) | "
            f"{r['val_grayscale']:.2%} / {r['test_grayscale']:.2%} |"
        )
    atomic_files.write_text(RESULTS / "cnn_profiles.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="the split both the trainings and evaluations used")
    parser.add_argument(
        "--entry",
        nargs=3,
        action="append",
        required=True,
        metavar=("LABEL", "TRAINED", "EVALUATED"),
        help="a label, a training output directory (train.json) and its evaluation directory (metrics.json)",
    )
    parser.add_argument("--note", default="", help="how the trainings were run (machine, what else ran)")
    args = parser.parse_args(argv)
    result = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "split": harness.shown_path(args.split),
        "note": args.note,
        "rows": [row(label, Path(t), Path(e), args.split) for label, t, e in args.entry],
    }
    write(result)
    return result


if __name__ == "__main__":
    main()
