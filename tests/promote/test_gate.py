"""The gate's rule, table-driven: the paper's numbers, ties, nothing passing, a collapsing class, each trust floor.

The candidates carry the trust figures a calibrated export reports (fixtures/promote_candidates.py `metrics`) and face the real
default policy; only the smoke-profile tests use that profile's policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures import promote_candidates as H

from components import domain, settings
from components.promote.gate import policy as gate
from components.promote.gate.policy import Candidate, Policy


def cand(name, macro_f1, params, recall=0.9, robust=0.97, latency=10.0, accuracy=None):
    m = H.metrics(name, macro_f1, accuracy if accuracy is not None else macro_f1, params, recall, robust, latency)
    return Candidate.from_metrics(m)


PAPER = [
    cand(n, v["macro_f1"], v["params"], v["recall"], v["robust"], v["latency"], v["accuracy"])
    for n, v in H.PAPER.items()
]


@pytest.mark.parametrize(
    "candidates, policy, expected",
    [
        pytest.param(PAPER, Policy(), "mobilenetv2", id="paper-numbers-pick-mobilenetv2"),
        pytest.param(PAPER[:1] + PAPER[2:], Policy(), "resnet50", id="paper-without-mobilenetv2"),
        pytest.param(PAPER, Policy(margin=0.005), "resnet50", id="tight-margin-picks-best"),
        pytest.param(
            PAPER,
            Policy(min_macro_f1=0.70, min_class_recall=0.5, min_robust_accuracy=0.5),
            "mobilenetv2",
            id="cnn-passes-floors-but-out-of-margin",
        ),
        pytest.param(
            [cand("a", 0.90, 1_000_000), cand("b", 0.90, 1_000_000)], Policy(), "a", id="exact-tie-alphabetical"
        ),
        pytest.param([cand("b", 0.91, 1_000_000), cand("a", 0.90, 1_000_000)], Policy(), "b", id="cost-tie-higher-f1"),
        pytest.param(
            [cand("big", 0.95, 10_000_000, latency=5.0), cand("small", 0.94, 1_000_000, latency=60.0)],
            Policy(),
            "big",
            id="latency-counts-in-cost",
        ),
        pytest.param(
            [cand("edge", 0.93, 1_000_000), cand("best", 0.95, 9_000_000)],
            Policy(margin=0.02),
            "edge",
            id="margin-is-inclusive",
        ),
        pytest.param(
            [
                cand("x", 0.97, 1_000, recall={**{c: 0.99 for c in domain.CLASS_NAMES}, "Early": 0.0}),
                cand("y", 0.90, 5_000),
            ],
            Policy(),
            "y",
            id="one-class-collapses",
        ),
        pytest.param(
            [cand("x", 0.97, 1_000, robust=0.2), cand("y", 0.90, 5_000)], Policy(), "y", id="robustness-floor"
        ),
        pytest.param(
            [cand("x", 0.97, 1_000, robust=None), cand("y", 0.90, 5_000)], Policy(), "y", id="missing-robustness-fails"
        ),
        pytest.param([cand("x", 0.80, 1_000), cand("y", 0.70, 5_000)], Policy(), None, id="nothing-passes"),
        pytest.param([], Policy(), None, id="no-candidates"),
    ],
)
def test_selection_table(candidates, policy, expected):
    sel = gate.select(candidates, policy)
    assert (sel.chosen.name if sel.chosen else None) == expected, sel.reason
    assert sum(r.chosen for r in sel.rows) == (1 if expected else 0)


def test_paper_decision_records_every_number():
    sel = gate.select(PAPER)
    rows = {r.name: r for r in sel.rows}
    assert rows["cnn"].passes_floors is False and any("macro-F1 0.7200 < 0.8500" in f for f in rows["cnn"].failures)
    assert rows["resnet50"].within_margin and rows["mobilenetv2"].within_margin
    assert rows["mobilenetv2"].cost == pytest.approx(2.0)
    assert rows["resnet50"].cost == pytest.approx(25.6 / 3.4 + 60 / 15)
    decision = gate.decide(sel, Policy())
    assert decision.promoted and decision.chosen == "mobilenetv2"
    md = gate.to_markdown(decision)
    assert "| mobilenetv2 | 0.9600 | 0.9663 |" in md and "**yes**" in md and "accepted on the floors alone" in md
    relaxed = {
        r.name: r
        for r in gate.select(PAPER, Policy(min_macro_f1=0.70, min_class_recall=0.5, min_robust_accuracy=0.5)).rows
    }
    assert relaxed["cnn"].passes_floors and not relaxed["cnn"].within_margin


def test_one_class_collapsing_names_the_class():
    c = cand("x", 0.97, 1_000, recall={**{k: 0.99 for k in domain.CLASS_NAMES}, "Pre": 0.0})
    sel = gate.select([c])
    assert sel.chosen is None
    assert "Pre recall 0.0000 < 0.7500" in sel.reason
    d = gate.decide(sel)
    assert d.summary.startswith("not promoted because no candidate passes the floors")


@pytest.mark.parametrize(
    "cand_f1, champ_f1, ok", [(0.96, 0.96, True), (0.951, 0.96, True), (0.945, 0.96, False), (0.99, 0.90, True)]
)
def test_regression_threshold(cand_f1, champ_f1, ok):
    assert gate.check_regression(cand_f1, champ_f1, Policy(max_regression=0.01))[0] is ok


def test_champion_check_is_a_constraint_before_cost():
    """A cheap model that regresses vs the champion does not block a better one within the margin."""
    ok_m, why_m = gate.check_regression(0.955, 0.97)
    ok_r, why_r = gate.check_regression(0.975, 0.97)
    assert not ok_m and ok_r
    sel = gate.select(PAPER, champion_checks={"mobilenetv2": (ok_m, why_m), "resnet50": (ok_r, why_r)})
    assert sel.chosen.name == "resnet50"
    rows = {r.name: r for r in sel.rows}
    assert "regresses" in rows["mobilenetv2"].vs_champion and not rows["mobilenetv2"].passes_floors
    d = gate.decide(
        sel,
        champion={"version": 1, "model": "resnet50", "macro_f1": 0.97},
        regression={"resnet50": {"ok": True, "reason": why_r}, "mobilenetv2": {"ok": False, "reason": why_m}},
    )
    assert d.promoted and d.chosen == "resnet50" and why_r in d.reason
    assert "rejected" in gate.to_markdown(d)
    none = gate.select(
        PAPER, champion_checks={"mobilenetv2": (False, why_m), "resnet50": (False, "resnet50 identical")}
    )
    d2 = gate.decide(none)
    assert not d2.promoted and d2.summary.startswith(
        "not promoted because no candidate passes the floors and the champion check"
    )


def test_infra_failure_is_not_promoted():
    d = gate.decide(gate.select(PAPER), infra={"ok": False, "reason": "probabilities do not sum to 1", "checks": []})
    assert not d.promoted and "failed infra validation: probabilities do not sum to 1" in d.summary
    assert gate.Decision.from_dict(d.to_dict()).summary == d.summary


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        gate.select([cand("a", 0.9, 1), cand("a", 0.9, 1)])


def test_grayscale_is_not_in_the_plausible_worst():
    """Grayscale (no stain at all) is left out of the worst plausible perturbation; it has its own floor."""
    metrics = H.metrics("x", 0.97, 0.97, 1_000, 0.9, 0.8, 10.0)
    metrics["robustness"] = {"brightness+15%": 0.95, "hue+0.05": 0.9, "grayscale": 0.25}
    metrics["robustness_worst"] = 0.25
    candidate = Candidate.from_metrics(metrics)
    assert candidate.robustness_worst == pytest.approx(0.9)
    metrics["robustness"]["hue+0.05"] = 0.3
    assert Candidate.from_metrics(metrics).robustness_worst == pytest.approx(0.3)


# ---------------------------------------------------------------- the trust floors (issues 12 and 13)


def _passing(name: str = "x", **kw) -> dict:
    """metrics.json of a candidate that passes every floor of the default policy."""
    return H.metrics(name, 0.97, 0.97, 1_000_000, **kw)


def _put(metrics: dict, path: tuple[str, ...], value) -> dict:
    """Set metrics[path] to value (None removes it)."""
    *parents, leaf = path
    node = metrics
    for key in parents:
        node = node[key]
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return metrics


def test_the_helpers_candidate_passes_every_default_floor():
    """The baseline the floor tests change one figure of: nothing fails under the default policy."""
    assert gate.floor_failures(Candidate.from_metrics(_passing()), Policy()) == []
    assert Policy() == Policy(**settings.profile("quick").gate)  # the pipeline's default profile gates on all of them


@pytest.mark.parametrize(
    "path, value, expected",
    [
        pytest.param(
            ("robustness", "brightness+15%"),
            0.94,
            ["worst robustness accuracy 0.9400 < 0.9500"],
            id="plausible-perturbation",
        ),
        pytest.param(("robustness", "grayscale"), 0.85, ["grayscale accuracy 0.8500 < 0.9000"], id="grayscale"),
        pytest.param(("robustness", "grayscale"), None, ["no grayscale accuracy"], id="grayscale-not-measured"),
        pytest.param(("referral", "test_referral_rate"), 0.08, ["test referral 0.0800 > 0.0500"], id="test-referral"),
        pytest.param(
            ("referral",),
            None,
            ["no referral figures (a model exported without calibration)", "no prediction-set coverage"],
            id="uncalibrated-export",
        ),
        pytest.param(("calibration", "ece_after"), 0.05, ["ECE 0.0500 > 0.0300"], id="ece"),
        pytest.param(("calibration", "ece_after"), float("nan"), ["no calibration figures"], id="ece-nan-is-missing"),
        pytest.param(("referral", "coverage"), 0.95, ["coverage 0.9500 not within 0.02 of 0.98"], id="coverage-under"),
        pytest.param(
            ("referral", "coverage_target"), 0.90, ["coverage 0.9850 not within 0.02 of 0.90"], id="coverage-over"
        ),
        pytest.param(
            ("external",),
            None,
            ["out-of-distribution detection not measured (no external smears given)"],
            id="external-detection-not-measured",
        ),
        pytest.param(
            ("external", "report", "referred"),
            0.90,
            ["external smears referred 0.9000 < 0.9500"],
            id="external-detection-too-low",
        ),
    ],
)
def test_each_trust_floor_blocks_promotion(path, value, expected):
    """One figure below its floor: exactly that floor fails, nothing is promoted, summary and decision.md say why."""
    c = Candidate.from_metrics(_put(_passing(), path, value))
    assert gate.floor_failures(c, Policy()) == expected
    decision = gate.decide(gate.select([c]))
    assert not decision.promoted and decision.chosen is None
    assert decision.summary == f"not promoted because no candidate passes the floors (x: {', '.join(expected)})"
    md = gate.to_markdown(decision)
    assert "**NOT PROMOTED**" in md and f"| fail: {'; '.join(expected)} |" in md


@pytest.mark.parametrize(
    "path, value, expected",
    [
        pytest.param(
            ("missed_malignancy",), H.missed(1, 100), ["missed malignancy clean 0.0100 (1 of 100) > 0.0050"], id="clean"
        ),
        pytest.param(("missed_malignancy",), None, ["no missed-malignancy figure clean"], id="clean-not-measured"),
        pytest.param(
            ("robustness_missed_malignancy", "brightness+15%"),
            H.missed(1, 9),
            ["missed malignancy under brightness+15% 0.1111 (1 of 9) > 0.0050"],
            id="plausible-perturbation",
        ),
        pytest.param(("robustness_missed_malignancy", "grayscale"), H.missed(5, 9), [], id="grayscale-not-gated"),
        pytest.param(
            ("robustness_missed_malignancy",), None, ["no missed-malignancy figure under the perturbations"], id="none"
        ),
        pytest.param(
            ("magnification", "magnification x2", "missed_malignancy"),
            H.missed(2, 9),
            ["missed malignancy at magnification x2 0.2222 (2 of 9) > 0.0050"],
            id="magnified",
        ),
        pytest.param(
            ("magnification", "magnification x2", "answered_accuracy"),
            0.90,
            ["magnification x2: accuracy 0.8000 < 0.9500 and answered accuracy 0.9000 < 0.9800 (referred 0.3000)"],
            id="magnified-neither-accurate-nor-referring",
        ),
        pytest.param(
            ("magnification", "magnification x0.6", "answered_accuracy"), 0.5, [], id="accurate-enough-answers-any"
        ),
        pytest.param(
            ("magnification",),
            None,
            ["no missed-malignancy figure at the magnifications", "no magnification figures"],
            id="magnification-not-measured",
        ),
    ],
)
def test_missed_malignancy_and_magnification_floors(path, value, expected):
    c = Candidate.from_metrics(_put(_passing(), path, value))
    assert gate.floor_failures(c, Policy()) == expected
    smoke = Policy(**settings.profile("smoke").gate)
    assert [f for f in gate.floor_failures(c, smoke) if "malignancy" in f or "magnification" in f] == []


def test_decision_table_shows_missed_malignancy():
    decision = gate.decide(
        gate.select([Candidate.from_metrics(_put(_passing(), ("missed_malignancy",), H.missed(0, 397)))])
    )
    assert "| 0 of 397 |" in gate.to_markdown(decision)


def test_external_detection_is_gated_on_the_report_half_only():
    """The choose half picked the thresholds: a good figure there does not stand in for the report half."""
    chose_badly = _put(_passing(), ("external", "choose", "referred"), 0.10)
    assert gate.floor_failures(Candidate.from_metrics(chose_badly), Policy()) == []
    assert Policy(min_ood_detection=None).min_ood_detection is None
    unmeasured = Candidate.from_metrics(_put(_passing(), ("external",), None))
    assert gate.floor_failures(unmeasured, Policy(min_ood_detection=None)) == []


def test_a_trust_failure_excludes_the_cheaper_candidate():
    """The trust floors are floors: the cheap model that is badly calibrated gives way to a dearer one."""
    cheap = Candidate.from_metrics(_put(H.metrics("cheap", 0.97, 0.97, 1_000_000), ("calibration", "ece_after"), 0.06))
    dear = Candidate.from_metrics(H.metrics("dear", 0.96, 0.96, 9_000_000))
    sel = gate.select([cheap, dear])
    assert sel.chosen.name == "dear"
    rows = {r.name: r for r in sel.rows}
    assert rows["cheap"].failures == ["ECE 0.0600 > 0.0300"] and not rows["cheap"].within_margin
    assert "ECE 0.0600 > 0.0300" in gate.to_markdown(gate.decide(sel))


def _smoke_like(name: str = "cnn", saved_model: str | None = None) -> dict:
    """What two epochs on 32-px synthetic squares report: fine on the test split, nothing a lab could trust."""
    m = H.metrics(name, 0.95, 0.95, 50_000, robust=0.40, grayscale=0.30, trust=False, saved_model=saved_model)
    m["referral"] = {**H.trust_figures()["referral"], "test_referral_rate": 0.60, "coverage": 0.70}
    m["calibration"] = {**H.trust_figures()["calibration"], "ece_after": 0.20}
    return m  # and no external smears


def test_smoke_profile_policy_does_not_gate_the_trust_floors():
    c = Candidate.from_metrics(_smoke_like())
    strict = gate.floor_failures(c, Policy())
    assert strict == [
        "worst robustness accuracy 0.4000 < 0.9500",
        "grayscale accuracy 0.3000 < 0.9000",
        "test referral 0.6000 > 0.0500",
        "ECE 0.2000 > 0.0300",
        "coverage 0.7000 not within 0.02 of 0.98",
        "out-of-distribution detection not measured (no external smears given)",
    ]
    smoke = Policy(**settings.profile("smoke").gate)
    assert gate.floor_failures(c, smoke) == []
    decision = gate.decide(gate.select([c], smoke), smoke)
    assert decision.promoted and "external smears referred >= not gated" in gate.to_markdown(decision)
    # the quality floors still hold there
    weak = Candidate.from_metrics({**_smoke_like(), "macro_f1": 0.50})
    assert gate.floor_failures(weak, smoke) == ["macro-F1 0.5000 < 0.8500"]


def test_gate_op_takes_the_trust_floors_from_its_profile(tmp_path, models, split_dir):
    """gate_op's own body (the KFP component's function): quick gates the smoke-like model out, smoke promotes it."""
    from components.promote.gate.component import gate_op

    ev = tmp_path / "eval-cnn"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps(_smoke_like(saved_model=str(models["good"]))))

    def artifact(path: Path) -> SimpleNamespace:
        return SimpleNamespace(path=str(path), metadata={})

    for profile, promoted in (("quick", False), ("smoke", True)):
        out = artifact(tmp_path / profile / "gate")
        md = artifact(tmp_path / profile / "decision.md")
        assert (
            gate_op.python_func(
                evaluations=[artifact(ev)], split=artifact(split_dir), gate=out, decision=md, profile=profile
            )
            is promoted
        )
        assert out.metadata["promote"] is promoted
        text = Path(md.path).read_text()
        if promoted:
            assert "**PROMOTED**" in text and "Infra validation" in text and "passed" in text
        else:
            assert "**NOT PROMOTED**" in text and "ECE 0.2000 > 0.0300" in text
            assert "out-of-distribution detection not measured" in out.metadata["summary"]
