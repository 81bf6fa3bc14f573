"""Does the stage come from the leukocytes? Quick MobileNetV2s on the pseudo-slide split, scored on val (the choice)
or test (the report) through `serving_default`, as evaluation scores them.

Each named model (a training output directory) is run over one part of the split and measured on:
clean accuracy, macro-F1, referral, ECE, missed malignancy and Benign recall (components/evaluate/malignancy.py);
the magnifications x0.6-x2 (components/evaluate/robustness.py, MAGNIFICATIONS); the three probes (leukocytes
removed, context swapped, Grad-CAM attention; components/evaluate/probes.py); and with `--perturbations` the
whole perturbation suite (worst plausible, grayscale, missed malignancy under each).

    python -m experiments.leukocyte_context --split SPLIT --part val --model baseline=RUN --model swap=RUN
        [--perturbations] [--out leukocyte_context_val]

Writes experiments/results/<out>.{json,md}. About 5 minutes per model and part on 2 idle cores without
`--perturbations`, 3x that with.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import typer

from benchmarks import harness

app = typer.Typer(add_completion=False)


def measure(model_dir: Path, split_dir: Path, part: str, perturbations: bool) -> dict:
    """Every figure of one model on one part of the split."""
    import tensorflow as tf

    from components import domain, records
    from components.evaluate import malignancy, probes, right_reason
    from components.evaluate.executor import TRUST_OUTPUTS, find_saved_model
    from components.evaluate.metrics import classification_metrics
    from components.evaluate.robustness import PERTURBATIONS, perturbed_sets, plausible
    from components.train.calibration import expected_calibration_error

    saved = find_saved_model(model_dir)
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]

    def run(images: list[bytes]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), 32):
            out = serve(images=tf.constant(images[i : i + 32]))
            for key in TRUST_OUTPUTS:
                if key in out:
                    parts.setdefault(key, []).append(out[key].numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    examples = list(records.iter_examples(split_dir / part))
    encoded = [e["encoded"] for e in examples]
    labels = np.array([e["label"] for e in examples])
    rgb = [domain.load_rgb(b) for b in encoded]
    started = time.perf_counter()
    clean = run(encoded)
    predicted = clean["probabilities"].argmax(axis=1)
    figures = right_reason.answered_figures(clean, labels)
    metrics = classification_metrics(labels, predicted)
    result = {
        "images": len(labels),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "referred": figures["referred"],
        "answered_accuracy": figures["answered_accuracy"],
        "no_white_cell_referred": float((~clean["leukocyte_in_view"]).mean()) if "leukocyte_in_view" in clean else None,
        "ece": expected_calibration_error(clean["probabilities"], labels),
        "missed_malignancy": figures["missed_malignancy"],
        "benign_recall": malignancy.benign_recall(labels, predicted),
        "magnification": right_reason.magnification(run, rgb, labels),
        "probes": probes.run_probes(run, rgb, labels, saved / "assets.extra" / "model.keras"),
    }
    if perturbations:
        suite = {name: right_reason.answered_figures(run(images), labels) for name, images in perturbed_sets(rgb)}
        gated = {n: f for n, f in suite.items() if n in plausible()}
        worst = min(gated, key=lambda n: gated[n]["accuracy"])
        result["perturbations"] = suite
        result["worst_plausible"] = {"name": worst, "accuracy": gated[worst]["accuracy"]}
        result["grayscale"] = suite["grayscale"]["accuracy"] if "grayscale" in PERTURBATIONS else None
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def markdown(results: dict, command: str, part: str) -> str:
    lines = [
        f"# Leukocyte context: quick MobileNetV2s on the {part} split (pseudo-slides)",
        "",
        f"`{command}`, {results['when']}, {results['host']['cpus']} cores, load {results['host']['load_average_1m']}.",
        "",
        "| model | accuracy | macro-F1 | referred (no white cell) | ECE | missed malignancy | leukocytes removed: "
        "referred / answered acc. | swapped: referred / follows leukocytes / background | attention median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        p = r["probes"]
        rem, sw, att = p["leukocytes_removed"], p["context_swapped"], p["attention"] or {}
        mm = r["missed_malignancy"]
        lines.append(
            f"| {name} | {_pct(r['accuracy'])} | {r['macro_f1']:.4f} | {_pct(r['referred'])} "
            f"({_pct(r['no_white_cell_referred'])}) | {r['ece']:.4f} | {mm['missed']} of {mm['malignant_images']} | "
            f"{_pct(rem['referred'])} / {_pct(rem['answered_accuracy'])} | {_pct(sw['referred'])} / "
            f"{_pct(sw['follows_leukocytes'])} / {_pct(sw['follows_background'])} | "
            f"{att.get('median_ratio') or 0:.2f} |"
        )
    lines += ["", "Magnification: accuracy / referred / answered accuracy / missed malignancy.", ""]
    names = list(results["models"])
    lines += ["| magnification | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    scales = list(next(iter(results["models"].values()))["magnification"])
    for scale in scales:
        cells = []
        for name in names:
            f = results["models"][name]["magnification"][scale]
            cells.append(
                f"{_pct(f['accuracy'])} / {_pct(f['referred'])} / {_pct(f['answered_accuracy'])} / "
                f"{f['missed_malignancy']['missed']}"
            )
        lines.append(f"| {scale} | " + " | ".join(cells) + " |")
    if any("perturbations" in r for r in results["models"].values()):
        lines += [
            "",
            "| model | worst plausible | grayscale | most missed malignancy under a perturbation |",
            "|---|---|---|---|",
        ]
        for name, r in results["models"].items():
            if "perturbations" not in r:
                continue
            worst_missed = max(r["perturbations"].items(), key=lambda kv: kv[1]["missed_malignancy"]["missed"])
            lines.append(
                f"| {name} | {_pct(r['worst_plausible']['accuracy'])} ({r['worst_plausible']['name']}) | "
                f"{_pct(r['grayscale'])} | {worst_missed[0]}: {worst_missed[1]['missed_malignancy']['missed']} |"
            )
    return "\n".join(lines) + "\n"


@app.command()
def main(
    split: Path = typer.Option(..., "--split", help="Split directory (pseudo-slide split)."),
    part: str = typer.Option("val", "--part", help="val (to choose) or test (to report)."),
    model: list[str] = typer.Option(..., "--model", help="NAME=training output directory; repeat."),
    perturbations: bool = typer.Option(False, "--perturbations", help="Also the whole perturbation suite."),
    out: str = typer.Option("leukocyte_context", "--out", help="Results file name (no suffix)."),
) -> None:
    import sys

    from components import atomic_files

    models = dict(m.split("=", 1) for m in model)
    results = {
        "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "host": harness.host_facts(),
        "split": harness.shown_path(split),
        "part": part,
        "models": {name: measure(Path(d), split, part, perturbations) for name, d in models.items()},
    }
    command = harness.command_line("experiments.leukocyte_context", sys.argv[1:])
    results["command"] = command
    folder = harness.results_dir(__file__)
    atomic_files.write_text(folder / f"{out}.json", json.dumps(results, indent=2))
    atomic_files.write_text(folder / f"{out}.md", markdown(results, command, part))
    print(markdown(results, command, part))


if __name__ == "__main__":
    app()
