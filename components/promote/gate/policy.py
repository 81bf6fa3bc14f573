"""The gate's decision rule, pure (no I/O): floors, then the best balance of quality against cost.

The rule, in one place:

1. **Floors.** A candidate is eligible only if macro-F1 >= `min_macro_f1`, *every* class's recall >=
   `min_class_recall` (one collapsing class fails the model however good the average), and the worst
   accuracy under the evaluation's perturbations >= `min_robust_accuracy`. That floor covers the
   perturbations another lab's stain, lamp or camera plausibly produces; those named in
   `settings.GATE_ROBUSTNESS_EXCLUDED` (grayscale) have their own floor, `min_grayscale_accuracy`.
   Knowing when it does not know: test referral <= `max_test_referral`, ECE <= `max_ece`, the prediction
   sets' coverage within `coverage_tolerance` of its target, and the external smears' held-out half
   referred >= `min_ood_detection` (None disables that floor, for the smoke profile's synthetic data).
   Missed malignancy (malignant answered Benign, not referred) <= `max_missed_malignancy` of the malignant
   test images, clean, under every plausible perturbation and at every magnification; at every
   magnification accuracy >= `min_magnification_accuracy`, or the answered images' accuracy >=
   `min_magnification_answered_accuracy` (None disables these, for the smoke profile).
   Missing figures fail the floor they feed.
2. **As good as the best.** Among eligible candidates, those whose macro-F1 is within `margin` of the best
   eligible macro-F1 (inclusive) are "as good".
3. **Cheapest of those.** cost = params / min(params) + latency_p50 / min(latency_p50), both minima taken over
   the "as good" set (so the cheapest on both scores 2.0). Latency is batch-1 p50 on CPU from
   `metrics.json`; when any candidate lacks it the cost is 2 * params / min(params). Params fall back to
   size_bytes when absent. Ties in cost (within 1e-9) go to higher macro-F1, then higher accuracy, then
   the name in alphabetical order, so the choice is deterministic.
0. **No regression** against the champion (TFX Evaluator style) is a constraint like the floors, applied
   before steps 2-3: chosen macro-F1 - champion macro-F1 >= -`max_regression`, both measured on the same
   test split (the executor re-evaluates both through the serving signature when the champion's split
   differs), and a candidate identical to the champion is not promoted again. So a cheap model that
   regresses does not block a better one within the margin. With no champion, the floors alone decide.
5. **Infra validation** of the chosen model (load, warmup, real requests) must pass; there is no fallback
   to the next candidate, since a model that cannot be served points at a pipeline bug.

With the paper's figures (ResNet50 0.97 / 25.6M params, MobileNetV2 0.96 / 3.4M, CNN 0.72) the CNN fails
the macro-F1 floor, both others are within 0.02 of 0.97, and MobileNetV2 is ~7.5x cheaper: it is chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from components import domain, settings

RULE = (
    "floors (macro-F1, every class's recall, worst plausible-perturbation accuracy, grayscale accuracy, test referral, "
    "calibration error, prediction-set coverage, external out-of-distribution detection, missed malignancy clean, "
    "perturbed and magnified, accurate-or-referring at every magnification) and no regression vs the "
    "champion beyond "
    "max_regression on the same test split; among those passing, the ones whose macro-F1 is within the margin of "
    "the best; of those the cheapest by params/min(params) + latency_p50/min(latency_p50); then infra validation"
)
_EPS = 1e-9


@dataclass(frozen=True)
class Policy:
    """The gate's thresholds (defaults from settings)."""

    min_macro_f1: float = settings.GATE_MIN_MACRO_F1
    min_class_recall: float = settings.GATE_MIN_CLASS_RECALL
    min_robust_accuracy: float = settings.GATE_MIN_ROBUST_ACCURACY
    margin: float = settings.GATE_MACRO_F1_MARGIN
    max_regression: float = settings.GATE_MAX_REGRESSION
    min_grayscale_accuracy: float = settings.GATE_MIN_GRAYSCALE_ACCURACY
    max_test_referral: float = settings.GATE_MAX_TEST_REFERRAL
    max_ece: float = settings.GATE_MAX_ECE
    coverage_tolerance: float = settings.GATE_COVERAGE_TOLERANCE
    min_ood_detection: float | None = settings.GATE_MIN_OOD_DETECTION
    max_missed_malignancy: float | None = settings.GATE_MAX_MISSED_MALIGNANCY
    min_magnification_accuracy: float | None = settings.GATE_MIN_MAGNIFICATION_ACCURACY
    min_magnification_answered_accuracy: float = settings.GATE_MIN_MAGNIFICATION_ANSWERED_ACCURACY


@dataclass
class Candidate:
    """One evaluated model: the figures the gate reads from its metrics.json."""

    name: str
    macro_f1: float | None
    accuracy: float | None = None
    recalls: dict[str, float] = field(default_factory=dict)
    robustness_worst: float | None = None
    params: int | None = None
    size_bytes: int | None = None
    latency_p50_ms: float | None = None
    saved_model: str | None = None
    source: str | None = None  # the candidate's evaluation directory
    split_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], source: str | None = None) -> Candidate:
        """Build from a metrics.json dict (docs/architecture.md schema)."""
        if "model" not in metrics:
            raise ValueError(f"metrics{' of ' + source if source else ''} has no 'model' field")
        per_class = metrics.get("per_class") or {}
        recalls = {str(k): float(v["recall"]) for k, v in per_class.items() if isinstance(v, dict) and "recall" in v}
        gated = {
            k: v for k, v in (metrics.get("robustness") or {}).items() if k not in settings.GATE_ROBUSTNESS_EXCLUDED
        }
        worst = min(float(v) for v in gated.values()) if gated else metrics.get("robustness_worst")
        latency = (metrics.get("latency_ms") or {}).get("batch1_p50")
        return cls(
            name=str(metrics["model"]),
            macro_f1=_opt_float(metrics.get("macro_f1")),
            accuracy=_opt_float(metrics.get("accuracy")),
            recalls=recalls,
            robustness_worst=_opt_float(worst),
            params=int(metrics["params"]) if metrics.get("params") is not None else None,
            size_bytes=int(metrics["size_bytes"]) if metrics.get("size_bytes") is not None else None,
            latency_p50_ms=_opt_float(latency),
            saved_model=metrics.get("saved_model"),
            source=source,
            split_hash=metrics.get("split_sha256"),
            metrics=metrics,
        )


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Row:
    """One candidate's line in the decision table."""

    name: str
    macro_f1: float | None
    accuracy: float | None
    min_recall: float | None
    min_recall_class: str | None
    robustness_worst: float | None
    params: int | None
    latency_p50_ms: float | None
    passes_floors: bool
    failures: list[str]
    within_margin: bool = False
    missed_malignancy: str | None = None  # "k of n" clean, malignant answered Benign and not referred
    cost: float | None = None
    chosen: bool = False
    vs_champion: str | None = None


def floor_failures(c: Candidate, policy: Policy) -> list[str]:
    """Why a candidate misses the floors (empty list: it passes)."""
    out = []
    if c.macro_f1 is None:
        out.append("no macro-F1")
    elif c.macro_f1 < policy.min_macro_f1 - _EPS:
        out.append(f"macro-F1 {c.macro_f1:.4f} < {policy.min_macro_f1:.4f}")
    missing = [n for n in domain.CLASS_NAMES if n not in c.recalls]
    if missing:
        out.append(f"no recall for {', '.join(missing)}")
    for name, recall in c.recalls.items():
        if recall < policy.min_class_recall - _EPS:
            out.append(f"{name} recall {recall:.4f} < {policy.min_class_recall:.4f}")
    if c.robustness_worst is None:
        out.append("no robustness figures")
    elif c.robustness_worst < policy.min_robust_accuracy - _EPS:
        out.append(f"worst robustness accuracy {c.robustness_worst:.4f} < {policy.min_robust_accuracy:.4f}")
    out += _trust_failures(c.metrics, policy)
    out += _malignancy_failures(c.metrics, policy)
    out += _magnification_failures(c.metrics, policy)
    return out


def _missed_failure(figures: Any, where: str, policy: Policy) -> str | None:
    share = _opt_float((figures or {}).get("missed_share"))
    if share is None:
        return f"no missed-malignancy figure {where}"
    if share > policy.max_missed_malignancy + _EPS:
        return (
            f"missed malignancy {where} {share:.4f} ({figures.get('missed')} of {figures.get('malignant_images')}) "
            f"> {policy.max_missed_malignancy:.4f}"
        )
    return None


def _malignancy_failures(metrics: dict[str, Any], policy: Policy) -> list[str]:
    """Missed malignancy clean, under each plausible perturbation and at each magnification."""
    if policy.max_missed_malignancy is None:
        return []
    checks = [(metrics.get("missed_malignancy"), "clean")]
    perturbed = metrics.get("robustness_missed_malignancy")
    if perturbed is None:
        checks.append((None, "under the perturbations"))
    else:
        plausible = [n for n in perturbed if n not in settings.GATE_ROBUSTNESS_EXCLUDED]
        checks += [(perturbed[n], f"under {n}") for n in plausible]
    magnification = metrics.get("magnification")
    if magnification is None:
        checks.append((None, "at the magnifications"))
    else:
        checks += [(m.get("missed_malignancy"), f"at {n}") for n, m in magnification.items()]
    return [f for f in (_missed_failure(figures, where, policy) for figures, where in checks) if f]


def _magnification_failures(metrics: dict[str, Any], policy: Policy) -> list[str]:
    """At every magnification: accurate, or what it answers is right (it refers the rest)."""
    if policy.min_magnification_accuracy is None:
        return []
    magnification = metrics.get("magnification")
    if not magnification:
        return ["no magnification figures"]
    out = []
    for name, m in magnification.items():
        accuracy, answered = _opt_float(m.get("accuracy")), _opt_float(m.get("answered_accuracy"))
        if accuracy is None:
            out.append(f"no accuracy at {name}")
        elif accuracy < policy.min_magnification_accuracy - _EPS and (
            answered is not None and answered < policy.min_magnification_answered_accuracy - _EPS
        ):
            out.append(
                f"{name}: accuracy {accuracy:.4f} < {policy.min_magnification_accuracy:.4f} and answered accuracy "
                f"{answered:.4f} < {policy.min_magnification_answered_accuracy:.4f} (referred {_fmt(m.get('referred'))})"
            )
    return out


def _trust_failures(metrics: dict[str, Any], policy: Policy) -> list[str]:
    """The floors on grayscale, referral, calibration, coverage and out-of-distribution detection."""
    out = []
    robustness = metrics.get("robustness") or {}
    for name in settings.GATE_ROBUSTNESS_EXCLUDED:
        value = _opt_float(robustness.get(name))
        if value is None:
            out.append(f"no {name} accuracy")
        elif value < policy.min_grayscale_accuracy - _EPS:
            out.append(f"{name} accuracy {value:.4f} < {policy.min_grayscale_accuracy:.4f}")
    referral = metrics.get("referral") or {}
    rate = _opt_float(referral.get("test_referral_rate"))
    if rate is None:
        out.append("no referral figures (a model exported without calibration)")
    elif rate > policy.max_test_referral + _EPS:
        out.append(f"test referral {rate:.4f} > {policy.max_test_referral:.4f}")
    ece = _opt_float((metrics.get("calibration") or {}).get("ece_after"))
    if ece is None:
        out.append("no calibration figures")
    elif ece > policy.max_ece + _EPS:
        out.append(f"ECE {ece:.4f} > {policy.max_ece:.4f}")
    coverage, target = _opt_float(referral.get("coverage")), _opt_float(referral.get("coverage_target"))
    if coverage is None or target is None:
        out.append("no prediction-set coverage")
    elif abs(coverage - target) > policy.coverage_tolerance + _EPS:
        out.append(f"coverage {coverage:.4f} not within {policy.coverage_tolerance:.2f} of {target:.2f}")
    if policy.min_ood_detection is not None:
        detected = _opt_float(((metrics.get("external") or {}).get("report") or {}).get("referred"))
        if detected is None:
            out.append("out-of-distribution detection not measured (no external smears given)")
        elif detected < policy.min_ood_detection - _EPS:
            out.append(f"external smears referred {detected:.4f} < {policy.min_ood_detection:.4f}")
    return out


def _size(c: Candidate) -> float | None:
    if c.params:
        return float(c.params)
    return float(c.size_bytes) if c.size_bytes else None


def costs(group: list[Candidate]) -> dict[str, float]:
    """The documented cost of each candidate of the "as good" group (lower is cheaper)."""
    sizes = [_size(c) for c in group]
    use_size = all(s is not None and s > 0 for s in sizes)
    use_latency = all(c.latency_p50_ms is not None and c.latency_p50_ms > 0 for c in group)
    out = {}
    for c in group:
        if use_size and use_latency:
            cost = _size(c) / min(sizes) + c.latency_p50_ms / min(x.latency_p50_ms for x in group)
        elif use_size:
            cost = 2.0 * _size(c) / min(sizes)
        elif use_latency:
            cost = 2.0 * c.latency_p50_ms / min(x.latency_p50_ms for x in group)
        else:
            cost = 2.0  # nothing to tell them apart: the tie-breakers decide
        out[c.name] = cost
    return out


@dataclass
class Selection:
    """Result of floors + margin + cost over the candidates."""

    chosen: Candidate | None
    rows: list[Row]
    best_macro_f1: float | None
    reason: str


def select(
    candidates: list[Candidate], policy: Policy = Policy(), champion_checks: dict[str, tuple[bool, str]] | None = None
) -> Selection:
    """Apply steps 1-3 of the rule; `champion_checks` (name -> (ok, reason)) adds the no-regression constraint."""
    if not candidates:
        return Selection(None, [], None, "no candidates were given")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    rows: dict[str, Row] = {}
    eligible = []
    checks = champion_checks or {}
    for c in candidates:
        failures = floor_failures(c, policy)
        if c.name in checks and not checks[c.name][0]:
            failures.append(checks[c.name][1])
        worst_cls = min(c.recalls, key=c.recalls.get) if c.recalls else None
        rows[c.name] = Row(
            name=c.name,
            macro_f1=c.macro_f1,
            accuracy=c.accuracy,
            min_recall=c.recalls.get(worst_cls) if worst_cls else None,
            min_recall_class=worst_cls,
            robustness_worst=c.robustness_worst,
            params=c.params,
            latency_p50_ms=c.latency_p50_ms,
            passes_floors=not failures,
            failures=failures,
            missed_malignancy=_missed_text(c.metrics.get("missed_malignancy")),
            vs_champion=checks[c.name][1] if c.name in checks else None,
        )
        if not failures:
            eligible.append(c)
    if not eligible:
        why = "; ".join(f"{c.name}: {', '.join(rows[c.name].failures)}" for c in candidates)
        what = "the floors and the champion check" if checks else "the floors"
        return Selection(None, list(rows.values()), None, f"no candidate passes {what} ({why})")
    best = max(c.macro_f1 for c in eligible)
    group = [c for c in eligible if c.macro_f1 >= best - policy.margin - _EPS]
    cost = costs(group)
    for c in group:
        rows[c.name].within_margin = True
        rows[c.name].cost = round(cost[c.name], 6)
    chosen = min(group, key=lambda c: (round(cost[c.name], 9), -c.macro_f1, -(c.accuracy or 0.0), c.name))
    rows[chosen.name].chosen = True
    others = [c.name for c in group if c is not chosen]
    reason = (
        f"{chosen.name} passes the floors and is the cheapest (cost {cost[chosen.name]:.3f}) of the candidates "
        f"within {policy.margin:.3f} macro-F1 of the best ({best:.4f})"
        + (f" [{', '.join(others)} also within the margin]" if others else "")
    )
    return Selection(chosen, list(rows.values()), best, reason)


def _missed_text(figures: Any) -> str | None:
    if not figures or figures.get("missed") is None:
        return None
    return f"{figures['missed']} of {figures.get('malignant_images')}"


def check_regression(candidate_f1: float, champion_f1: float, policy: Policy = Policy()) -> tuple[bool, str]:
    """Step 0: the change threshold against the champion (same split)."""
    delta = candidate_f1 - champion_f1
    if delta >= -policy.max_regression - _EPS:
        return True, f"macro-F1 change vs champion {delta:+.4f} >= -{policy.max_regression:.4f}"
    return (
        False,
        f"macro-F1 {candidate_f1:.4f} regresses {delta:+.4f} vs champion {champion_f1:.4f} (allowed -{policy.max_regression:.4f})",
    )


@dataclass
class Decision:
    """Everything the gate decided and why; written as decision.json and decision.md."""

    promoted: bool
    chosen: str | None
    reason: str
    rule: str
    policy: dict[str, float]
    rows: list[Row]
    best_macro_f1: float | None = None
    chosen_saved_model: str | None = None
    chosen_source: str | None = None
    split_hash: str | None = None
    champion: dict[str, Any] | None = None  # version, model, macro_f1, split_hash, how it was measured
    regression: dict[str, Any] | None = None  # per candidate: candidate_f1, champion_f1, delta, ok, reason, measured_on
    infra: dict[str, Any] | None = None  # infra validation checks
    version: int | None = None  # filled once promoted
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        d = dict(d)
        d["rows"] = [Row(**r) for r in d.get("rows", [])]
        return cls(**d)

    @property
    def summary(self) -> str:
        """One line: 'promoted X ...' or 'not promoted because ...'."""
        if self.promoted:
            where = f" as version {self.version} ({self.label})" if self.version is not None else ""
            return f"promoted {self.chosen}{where}: {self.reason}"
        return f"not promoted because {self.reason}"


def decide(
    selection: Selection,
    policy: Policy = Policy(),
    champion: dict[str, Any] | None = None,
    regression: dict[str, Any] | None = None,
    infra: dict[str, Any] | None = None,
    split_hash: str | None = None,
) -> Decision:
    """Combine the selection, infra validation and the champion comparison into one Decision."""
    chosen = selection.chosen
    base = dict(
        rule=RULE,
        policy=asdict(policy),
        rows=selection.rows,
        best_macro_f1=selection.best_macro_f1,
        split_hash=split_hash,
        champion=champion,
        regression=regression,
        infra=infra,
    )
    if chosen is None:
        return Decision(promoted=False, chosen=None, reason=selection.reason, **base)
    base.update(chosen_saved_model=chosen.saved_model, chosen_source=chosen.source)
    if infra is not None and not infra.get("ok"):
        return Decision(False, chosen.name, f"{chosen.name} failed infra validation: {infra.get('reason')}", **base)
    reason = selection.reason
    if champion is None:
        reason += "; no champion yet, accepted on the floors alone"
    elif (regression or {}).get(chosen.name):
        reason += f"; {regression[chosen.name]['reason']}"
    return Decision(True, chosen.name, reason, **base)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(decision: Decision) -> str:
    """decision.md: the verdict, the rule, the table of every number, the champion comparison."""
    p = decision.policy
    lines = [
        "# Promotion decision",
        "",
        f"**{'PROMOTED' if decision.promoted else 'NOT PROMOTED'}** — {decision.summary}",
        "",
        f"Rule: {decision.rule}.",
        "",
        f"Floors: macro-F1 >= {p['min_macro_f1']}, each class's recall >= {p['min_class_recall']}, "
        f"worst robustness accuracy >= {p['min_robust_accuracy']}, grayscale accuracy >= "
        f"{p.get('min_grayscale_accuracy')}, test referral <= {p.get('max_test_referral')}, ECE <= {p.get('max_ece')}, "
        f"prediction-set coverage within {p.get('coverage_tolerance')} of its target, external smears referred >= "
        f"{p.get('min_ood_detection') if p.get('min_ood_detection') is not None else 'not gated'}, "
        f"missed malignancy <= {p.get('max_missed_malignancy') if p.get('max_missed_malignancy') is not None else '(not gated)'}"
        " of malignant images clean, perturbed and magnified, at every magnification accuracy >= "
        f"{p.get('min_magnification_accuracy') if p.get('min_magnification_accuracy') is not None else '(not gated)'} "
        f"or answered accuracy >= {p.get('min_magnification_answered_accuracy')}; "
        f"margin {p['margin']}; "
        f"max regression vs champion {p['max_regression']}.",
        "",
        "| model | macro-F1 | accuracy | min recall (class) | worst robustness | missed malignancy (clean) | params | "
        "latency p50 ms | floors and champion check | within margin | cost | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in decision.rows:
        floors = "pass" if r.passes_floors else "fail: " + "; ".join(r.failures)
        recall = f"{_fmt(r.min_recall)} ({r.min_recall_class})" if r.min_recall_class else "–"
        lines.append(
            f"| {r.name} | {_fmt(r.macro_f1)} | {_fmt(r.accuracy)} | {recall} | {_fmt(r.robustness_worst)} | "
            f"{_fmt(r.missed_malignancy)} | {_fmt(r.params)} | {_fmt(r.latency_p50_ms, 2)} | {floors} | {_fmt(r.within_margin)} | "
            f"{_fmt(r.cost, 3)} | {'**yes**' if r.chosen else ''} |"
        )
    lines += ["", "## Champion", ""]
    if decision.champion is None:
        lines.append("No champion yet: the first model is accepted on the floors alone.")
    else:
        ch = decision.champion
        lines.append(
            f"Champion: version {ch.get('version')} ({ch.get('model')}), macro-F1 {_fmt(ch.get('macro_f1'))}, "
            f"split {str(ch.get('split_hash'))[:12]}."
        )
        lines.append("")
    for name, rg in (decision.regression or {}).items():
        where = f" on {rg['measured_on']}" if rg.get("measured_on") else ""
        lines.append(f"- {name}{where}: {'ok' if rg.get('ok') else 'rejected'}: {rg.get('reason')}")
    lines += ["", "## Infra validation", ""]
    if decision.infra is None:
        lines.append("Not run (no candidate was chosen).")
    else:
        lines.append(f"{'passed' if decision.infra.get('ok') else 'FAILED'}: {decision.infra.get('reason')}")
        for check in decision.infra.get("checks", []):
            lines.append(f"- {check}")
    if decision.split_hash:
        lines += ["", f"Test split manifest sha256: `{decision.split_hash}`"]
    lines += ["", decision.summary if decision.promoted else f"**{decision.summary}**", ""]
    return "\n".join(lines)
