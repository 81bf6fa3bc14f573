"""`leukoflow promote` and `leukoflow registry ...` through the real root CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner
from fixtures import promote_candidates as H

from pipelines.cli import app


def _run(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def test_promote_and_registry_commands(tmp_path, models, split_dir):
    a = H.make_candidate(tmp_path / "e1", "mobilenetv2", models["good"], macro_f1=0.96, accuracy=0.96, params=3_400_000)
    b = H.make_candidate(tmp_path / "e1", "cnn", models["worse"], macro_f1=0.72, accuracy=0.79, params=1_000)
    r = _run(
        "promote",
        "--candidates",
        str(a),
        str(b),
        "--split-dir",
        str(split_dir),
        "--out",
        str(tmp_path / "o1"),
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["promoted"] and out["chosen"] == "mobilenetv2" and out["version"] == 1
    c = H.make_candidate(tmp_path / "e2", "resnet50", models["good2"], macro_f1=0.97, accuracy=0.97, params=25_600_000)
    r = _run(
        "promote",
        "--candidates",
        str(c),
        "--split-dir",
        str(split_dir),
        "--out",
        str(tmp_path / "o2"),
        "--label",
        "canary",
    )
    assert r.exit_code == 0 and "promoted resnet50 as version 2 (canary)" in r.stdout, r.output

    r = _run("registry", "list", "--json")
    rows = json.loads(r.stdout)
    assert [(x["version"], x["aliases"], x["label"]) for x in rows] == [
        (2, ["challenger"], "canary"),
        (1, ["champion"], "stable"),
    ]
    assert {"version", "aliases", "label", "macro_f1", "accuracy", "model_path"} <= set(rows[0])
    assert "mobilenetv2" in _run("registry", "list").stdout

    r = _run("registry", "promote", "2", "--label", "stable", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["aliases"] == {"champion": 2}
    r = _run("registry", "rollback", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["version"] == 1

    # clear errors, one JSON object
    r = _run("registry", "promote", "9", "--label", "stable", "--json")
    assert r.exit_code == 1 and "not in the registry" in json.loads(r.stdout)["error"]
    r = _run("registry", "promote", "1", "--label", "beta")
    assert r.exit_code == 1 and "stable or canary" in r.stderr
    r = _run("promote", "--candidates", str(tmp_path / "missing"), "--json")
    assert r.exit_code == 1 and "metrics.json" in json.loads(r.stdout)["error"]


def test_not_promoted_ends_with_reason(tmp_path, models, split_dir):
    b = H.make_candidate(tmp_path / "e", "cnn", models["worse"], macro_f1=0.72, accuracy=0.79, params=1_000)
    r = _run("promote", str(b), "--split-dir", str(split_dir), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0
    assert r.stdout.strip().splitlines()[-1].startswith("not promoted because no candidate passes the floors")
