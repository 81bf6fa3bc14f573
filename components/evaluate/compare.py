"""One markdown comparison table across models from their metrics.json files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from components import atomic_files
from components.evaluate.robustness import PERTURBATIONS


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ci(value: float, ci: Sequence[float] | None) -> str:
    return f"{_pct(value)} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(value)


def comparison_markdown(metrics: list[dict]) -> str:
    """The table (accuracy and macro-F1 with 95% CIs, Benign recall, robustness, shortcut, params, size, latency)."""
    if not metrics:
        raise ValueError("no metrics to compare")
    lines = [
        "## Model comparison (test split)",
        "",
        "| model | accuracy % [95% CI] | macro-F1 % [95% CI] | Benign recall % | worst perturbed acc % "
        "| shortcut baseline acc / macro-F1 % | params | SavedModel MB | latency b1 p50 / p95 ms | b32 img/s "
        "| weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        short = m.get("shortcut_baseline") or {}
        lat = m.get("latency_ms") or {}
        lines.append(
            f"| {m['model']} | {_ci(m['accuracy'], m.get('accuracy_ci'))} | {_ci(m['macro_f1'], m.get('macro_f1_ci'))} "
            f"| {_pct(m['per_class']['Benign']['recall'])} | {_pct(m.get('robustness_worst'))} "
            f"| {_pct(short.get('accuracy'))} / {_pct(short.get('macro_f1'))} | {m.get('params', 0):,} "
            f"| {m.get('size_bytes', 0) / 1e6:.1f} | {lat.get('batch1_p50', 0):.1f} / {lat.get('batch1_p95', 0):.1f} "
            f"| {m.get('throughput_b32', 0):.1f} | {m.get('weights_used') or 'n/a'} |"
        )
    names = [p for p in PERTURBATIONS if any(p in (m.get("robustness") or {}) for m in metrics)]
    if names:
        lines += [
            "",
            "### Robustness: test accuracy % under fixed perturbations",
            "",
            "| model | clean | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for m in metrics:
            rob = m.get("robustness") or {}
            lines.append(
                f"| {m['model']} | {_pct(m.get('robustness_clean', m['accuracy']))} | "
                + " | ".join(_pct(rob.get(n)) for n in names)
                + " |"
            )
    lines += [
        "",
        "Shortcut baseline: a gradient-boosted tree on global colour statistics (RGB mean/std, HSV histograms), "
        "trained on the same train split. Latency: `serving_default` on real JPEG bytes, CPU, in-process.",
    ]
    return "\n".join(lines) + "\n"


def compare(metrics_paths: Sequence[str | Path], out_path: str | Path) -> str:
    """Read each metrics.json (a file or a directory holding one), write the markdown table to `out_path`."""
    metrics = []
    for path in metrics_paths:
        path = Path(path)
        if path.is_dir():
            path = path / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"metrics file {path} does not exist")
        metrics.append(json.loads(path.read_text()))
    text = comparison_markdown(metrics)
    atomic_files.write_text(out_path, text)
    return text
