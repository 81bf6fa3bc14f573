"""checks/served_checks names the run its figures come from, not merely the latest one."""

from __future__ import annotations

from checks.served_checks import run_containing


def test_the_run_is_the_one_holding_the_given_metrics_or_split(tmp_path):
    from components import home

    older = home.pipeline_root() / "leukoflow-older"
    metrics = older / "for-loop-1-iteration-0" / "evaluate-op" / "evaluation" / "metrics.json"
    split = older / "split-op" / "split"
    for path in (metrics.parent, split, home.pipeline_root() / "leukoflow-newer"):
        path.mkdir(parents=True, exist_ok=True)
    metrics.write_text("{}")
    assert run_containing(metrics) == older.resolve()
    assert run_containing(split) == older.resolve()
    assert run_containing(tmp_path / "elsewhere" / "metrics.json") is None
