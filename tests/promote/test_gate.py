"""The gate's rule, table-driven: the paper's numbers, ties, nothing passing, a collapsing class."""

from __future__ import annotations

import pytest
import promote_helpers as H

from components import domain
from components.promote.gate import policy as gate
from components.promote.gate.policy import Candidate, Policy


def cand(name, macro_f1, params, recall=0.9, robust=0.8, latency=10.0, accuracy=None):
    m = H.metrics(name, macro_f1, accuracy if accuracy is not None else macro_f1, params, recall, robust, latency)
    return Candidate.from_metrics(m)


PAPER = [cand(n, v["macro_f1"], v["params"], v["recall"], v["robust"], v["latency"], v["accuracy"]) for n, v in H.PAPER.items()]


@pytest.mark.parametrize(
    "candidates, policy, expected",
    [
        pytest.param(PAPER, Policy(), "mobilenetv2", id="paper-numbers-pick-mobilenetv2"),
        pytest.param(PAPER[:1] + PAPER[2:], Policy(), "resnet50", id="paper-without-mobilenetv2"),
        pytest.param(PAPER, Policy(margin=0.005), "resnet50", id="tight-margin-picks-best"),
        pytest.param(PAPER, Policy(min_macro_f1=0.70, min_class_recall=0.5), "mobilenetv2", id="cnn-passes-floors-but-out-of-margin"),
        pytest.param([cand("a", 0.90, 1_000_000), cand("b", 0.90, 1_000_000)], Policy(), "a", id="exact-tie-alphabetical"),
        pytest.param([cand("b", 0.91, 1_000_000), cand("a", 0.90, 1_000_000)], Policy(), "b", id="cost-tie-higher-f1"),
        pytest.param([cand("big", 0.95, 10_000_000, latency=5.0), cand("small", 0.94, 1_000_000, latency=60.0)],
                     Policy(), "big", id="latency-counts-in-cost"),
        pytest.param([cand("edge", 0.93, 1_000_000), cand("best", 0.95, 9_000_000)], Policy(margin=0.02), "edge",
                     id="margin-is-inclusive"),
        pytest.param([cand("x", 0.97, 1_000, recall={**{c: 0.99 for c in domain.CLASS_NAMES}, "Early": 0.0}),
                      cand("y", 0.90, 5_000)], Policy(), "y", id="one-class-collapses"),
        pytest.param([cand("x", 0.97, 1_000, robust=0.2), cand("y", 0.90, 5_000)], Policy(), "y", id="robustness-floor"),
        pytest.param([cand("x", 0.97, 1_000, robust=None), cand("y", 0.90, 5_000)], Policy(), "y", id="missing-robustness-fails"),
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


def test_one_class_collapsing_names_the_class():
    c = cand("x", 0.97, 1_000, recall={**{k: 0.99 for k in domain.CLASS_NAMES}, "Pre": 0.0})
    sel = gate.select([c])
    assert sel.chosen is None
    assert "Pre recall 0.0000 < 0.7500" in sel.reason
    d = gate.decide(sel)
    assert d.summary.startswith("not promoted because no candidate passes the floors")


@pytest.mark.parametrize("cand_f1, champ_f1, ok", [(0.96, 0.96, True), (0.951, 0.96, True), (0.945, 0.96, False), (0.99, 0.90, True)])
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
    d = gate.decide(sel, champion={"version": 1, "model": "resnet50", "macro_f1": 0.97},
                    regression={"resnet50": {"ok": True, "reason": why_r}, "mobilenetv2": {"ok": False, "reason": why_m}})
    assert d.promoted and d.chosen == "resnet50" and why_r in d.reason
    assert "rejected" in gate.to_markdown(d)
    none = gate.select(PAPER, champion_checks={"mobilenetv2": (False, why_m), "resnet50": (False, "resnet50 identical")})
    d2 = gate.decide(none)
    assert not d2.promoted and d2.summary.startswith("not promoted because no candidate passes the floors and the champion check")


def test_infra_failure_is_not_promoted():
    d = gate.decide(gate.select(PAPER), infra={"ok": False, "reason": "probabilities do not sum to 1", "checks": []})
    assert not d.promoted and "failed infra validation: probabilities do not sum to 1" in d.summary
    assert gate.Decision.from_dict(d.to_dict()).summary == d.summary


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        gate.select([cand("a", 0.9, 1), cand("a", 0.9, 1)])


def test_grayscale_is_reported_not_gated():
    """Grayscale (no stain at all) does not block a model that is robust to plausible stain and lamp changes."""
    metrics = H.metrics("x", 0.97, 0.97, 1_000, 0.9, 0.8, 10.0)
    metrics["robustness"] = {"brightness+15%": 0.95, "hue+0.05": 0.9, "grayscale": 0.25}
    metrics["robustness_worst"] = 0.25
    candidate = Candidate.from_metrics(metrics)
    assert candidate.robustness_worst == pytest.approx(0.9)
    metrics["robustness"]["hue+0.05"] = 0.3
    assert Candidate.from_metrics(metrics).robustness_worst == pytest.approx(0.3)
