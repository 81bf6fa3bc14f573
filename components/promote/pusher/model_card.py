"""The model card of a promoted version (Markdown): data, metrics with intervals, use and limitations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components import domain, model_metadata, settings

CITATION = (
    "Aria, M., Ghaderzadeh, M., Bashash, D., Abolghasemi, H., Asadi, F., Hosseini, A. (2021). "
    '"Acute Lymphoblastic Leukemia (ALL) image dataset". Kaggle. doi:10.34740/KAGGLE/DSV/2175623'
)


def low_confidence_threshold(saved_model_dir: str | Path | None) -> float:
    """The threshold the trainer wrote into the model's metadata, else the default."""
    meta = model_metadata.read_or_none(saved_model_dir)
    return meta.low_confidence if meta else settings.LOW_CONFIDENCE_THRESHOLD


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.2f}%"


def _num(v: Any, d: int = 4) -> str:
    return "–" if v is None else f"{float(v):.{d}f}"


def _ci(ci: Any, fmt=_pct) -> str:
    return f" (95% CI {fmt(ci[0])}–{fmt(ci[1])})" if ci and len(ci) == 2 else ""


def _weights_note(model: str, weights: str) -> str:
    """The pretrained-weights limitation: only MobileNetV2's ImageNet weights are available offline here."""
    if model == "resnet50" and "imagenet" not in weights.lower():
        return (
            "- This ResNet50 was trained without ImageNet weights (none are available offline here), unlike the "
            "paper's; its figures are not comparable to the paper's ResNet50."
        )
    if "imagenet" in weights.lower():
        return (
            f"- Pretrained weights: {weights}. Here the MobileNetV2 ImageNet weights are dequantised from Google's "
            "int8 model (see ../shared/weights/README.md); ResNet50 runs here without ImageNet weights."
        )
    return "- ResNet50 runs here without ImageNet weights (none are available offline), unlike the paper's."


def _right_reason(metrics: dict[str, Any]) -> list[str]:
    """Missed malignancy (clean, worst perturbed or magnified), sensitivity and the leukocyte probes, when measured."""
    missed = metrics.get("missed_malignancy")
    if not missed or not missed.get("malignant_images"):
        return []
    worst = metrics.get("missed_malignancy_worst") or {}
    probes = metrics.get("probes") or {}
    removed, swapped = probes.get("leukocytes_removed") or {}, probes.get("context_swapped") or {}
    attention = probes.get("attention") or {}
    benign = metrics.get("benign_recall") or {}
    oof = metrics.get("benign_recall_out_of_fold") or {}
    lines = [
        "### Missed malignancy",
        "",
        f"- Malignant test images answered Benign and not referred: {missed['missed']} of {missed['malignant_images']} "
        f"({_pct(missed.get('missed_share'))}{_ci(missed.get('missed_share_ci'))}); malignancy sensitivity (answered "
        f"malignant or referred) {_pct(missed.get('sensitivity'))}{_ci(missed.get('sensitivity_ci'))}.",
        f"- Worst under a plausible perturbation or another magnification: {worst.get('name') or '–'}, "
        f"{_pct(worst.get('missed_share'))}.",
    ]
    if benign.get("recall") is not None:
        lines.append(
            f"- Benign recall on this test split {_pct(benign['recall'])}{_ci(benign.get('ci'))} ({benign['correct']} of "
            f"{benign['images']}; no target)"
            + (
                f"; out of fold {_pct(oof['recall'])}{_ci(oof.get('ci'))} ({oof['correct']} of {oof['images']})."
                if oof.get("recall") is not None
                else "."
            )
        )
    if removed:
        lines += [
            "",
            "### Does the stage come from the leukocytes?",
            "",
            f"- Leukocytes removed (filled with the smear's background): {_pct(removed.get('referred'))} referred; the "
            f"answered ones {_pct(removed.get('answered_accuracy'))} right (a model reading the cells would refer all).",
            f"- One image's leukocytes on another class's background: {_pct(swapped.get('referred'))} referred; of the "
            f"answered, {_pct(swapped.get('follows_leukocytes'))} follow the leukocytes, "
            f"{_pct(swapped.get('follows_background'))} the background.",
            f"- Grad-CAM mass on the leukocytes over the area they cover, median: "
            f"{_num(attention.get('median_ratio'), 2)} (1: no more attention than anywhere else).",
        ]
    return lines + [""]


def render(
    version: int | None,
    metrics: dict[str, Any],
    train: dict[str, Any] | None,
    provenance: dict[str, str],
    decision_summary: str,
    threshold: float,
) -> str:
    """The card's Markdown. `provenance`: data_hash, split_hash, git_commit, pipeline_run_id."""
    train = train or {}
    config = train.get("config") or {}
    model = metrics.get("model", "?")
    weights = train.get("weights_used") or metrics.get("weights_used") or config.get("weights", "?")
    lines = [
        f"# Model card: {model}" + (f", version {version}" if version is not None else ""),
        "",
        "## Model",
        "",
        f"- Architecture: {model}; parameters: {metrics.get('params', '–'):,}"
        if isinstance(metrics.get("params"), int)
        else f"- Architecture: {model}; parameters: {metrics.get('params', '–')}",
        f"- Pretrained weights: {weights}",
        f"- Input: encoded image bytes (JPEG, PNG, BMP, GIF, WebP), resized in the graph to {config.get('image_size', '?')} px",
        f"- Output: probabilities over {', '.join(domain.CLASS_NAMES)} and the arg-max label",
        f"- Size: {metrics.get('size_bytes', '–')} bytes; CPU latency p50 (batch 1): {(metrics.get('latency_ms') or {}).get('batch1_p50', '–')} ms",
        "",
        "## Data",
        "",
        f"- Dataset: {CITATION}.",
        f"- Data version (DVC md5 of `data/`): `{provenance.get('data_hash', 'unknown')}`",
        f"- Split manifest sha256: `{provenance.get('split_hash', 'unknown')}`; test images: {metrics.get('test_images', '–')}",
        f"- Code: git commit `{provenance.get('git_commit', 'unknown')}`; pipeline run `{provenance.get('pipeline_run_id') or '–'}`",
        "",
        "## Metrics (test split)",
        "",
        f"- Accuracy: {_pct(metrics.get('accuracy'))}{_ci(metrics.get('accuracy_ci'))}",
        f"- Macro-F1: {_num(metrics.get('macro_f1'))}{_ci(metrics.get('macro_f1_ci'), _num)}",
        f"- Weighted F1: {_num(metrics.get('weighted_f1'))}",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name in domain.CLASS_NAMES:
        pc = (metrics.get("per_class") or {}).get(name, {})
        lines.append(
            f"| {name} | {_num(pc.get('precision'))} | {_num(pc.get('recall'))} | {_num(pc.get('f1'))} | {pc.get('support', '–')} |"
        )
    base = metrics.get("shortcut_baseline") or {}
    lines += [
        "",
        "### Shortcut baseline",
        "",
        f"A classifier on global colour and brightness statistics alone reaches accuracy {_pct(base.get('accuracy'))}, "
        f"macro-F1 {_num(base.get('macro_f1'))}. On this data, colour almost gives the class away: a high score here does "
        "not show that the model reads cell morphology.",
        "",
        "### Robustness (accuracy under perturbations)",
        "",
        "| perturbation | accuracy |",
        "|---|---|",
    ]
    for k, v in (metrics.get("robustness") or {}).items():
        lines.append(f"| {k} | {_pct(v)} |")
    lines += [f"| worst | {_pct(metrics.get('robustness_worst'))} |", ""]
    lines += _right_reason(metrics)
    lines += [
        "## Intended use",
        "",
        "Decision support for a pathologist reviewing peripheral blood smear images for acute lymphoblastic "
        "leukemia stage (Benign, Early, Pre, Pro). **It is not a diagnosis** and must not be used without a "
        "qualified reviewer.",
        "",
        f"Low-confidence threshold: {threshold:.2f} — predictions whose top probability is below it are flagged "
        '"low confidence: refer to a pathologist".',
        "",
        "## Limitations",
        "",
        "- No patient IDs (nor slide IDs) in the public data: the split groups images into pseudo-slides by the smear around "
        "their leukocytes, which keeps most of a slide's images together but cannot promise it; the scores may still be "
        "optimistic for new patients. Near-duplicates were removed before the split.",
        "- The images come from a single laboratory's staining and imaging setup: a different stain batch, lamp or "
        "camera shifts colour and brightness, which the model relies on heavily; the drift monitor watches for this.",
        _weights_note(str(model), str(weights)),
        "- Four classes only; other haematological conditions are out of scope.",
        "",
        "## Promotion",
        "",
        decision_summary,
        "",
    ]
    return "\n".join(lines)


SHADOW_HEADING = "## Live shadow comparison (staged rollout)"


def with_shadow_section(card: str, summary: dict[str, Any] | None, decision: dict[str, Any]) -> str:
    """The card with its shadow-comparison section (replacing an earlier one): the canary's evidence on live traffic."""
    card = card.split("\n" + SHADOW_HEADING, 1)[0].rstrip() + "\n"
    lines = ["", SHADOW_HEADING, ""]
    if not summary or not summary.get("compared"):
        lines.append("No live call was compared with this version while it was canary.")
    else:
        ref, lat = summary["referral_rate"], summary["latency"]
        lines += [
            f"While canary, {summary['compared']} live images ({summary['calls']} calls, {summary['first']} to "
            f"{summary['last']}) were also sent to this version by the request-logging proxy, off the request path.",
            "",
            "| figure | stable | this version |",
            "|---|---|---|",
            f"| agreement with stable | | {_pct(summary['agreement'])} |",
            f"| referral rate | {_pct(ref['stable'])} | {_pct(ref['canary'])} |",
            f"| latency p50 (ms) | {_num(lat['stable']['p50_ms'], 2)} | {_num(lat['canary']['p50_ms'], 2)} |",
            f"| latency p99 (ms) | {_num(lat['stable']['p99_ms'], 2)} | {_num(lat['canary']['p99_ms'], 2)} |",
            "",
            "Agreement per class of the stable answer: "
            + ", ".join(f"{c} {_pct(v['agreement'])} of {v['compared']}" for c, v in summary["per_class"].items()),
            f"Disagreements: {summary['disagreements']}; shadow calls dropped {summary['dropped']}, "
            f"failed {summary['failed']}.",
        ]
    lines += ["", f"Rollout decision: {decision.get('decision')} ({decision.get('reason')}) at {decision.get('at')}."]
    if decision.get("failures") and decision.get("failures") != "none":
        lines.append(f"Figures that did not meet the policy: {decision['failures']}.")
    return card + "\n".join(lines) + "\n"
