"""Defect 7: `registry promote`/`rollback` reported success that a non-polling server never applied."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fixtures import promote_candidates as H
from fixtures.model_base import start_server
from promote.conftest import _template_db, home, models, split_dir  # noqa: F401,E402 - the promotion tests' fixtures

from pipelines.cli import app

pytestmark = pytest.mark.timeout(300)


def _run(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_label_moves_are_applied_by_the_server_or_said_not_to_be(tmp_path, home, models, split_dir):  # noqa: F811
    from components import home as state

    a = H.make_candidate(tmp_path / "e1", "mobilenetv2", models["good"], macro_f1=0.96, accuracy=0.96, params=3_400_000)
    assert (
        _run("promote", "--candidates", str(a), "--split-dir", str(split_dir), "--out", str(tmp_path / "o1")).exit_code
        == 0
    )
    b = H.make_candidate(tmp_path / "e2", "resnet50", models["good2"], macro_f1=0.97, accuracy=0.97, params=25_600_000)
    r = _run(
        "promote",
        "--candidates",
        str(b),
        "--split-dir",
        str(split_dir),
        "--out",
        str(tmp_path / "o2"),
        "--label",
        "canary",
    )
    assert r.exit_code == 0, r.output
    # A server that does not poll models.config (the default of tensorflow_model_server).
    srv = start_server(rest_api_port=-1, model_config_file=str(state.models_config_path()))
    try:
        manager = srv.core.manager
        assert manager.resolve("leukemia", label="stable").version == 1
        address = f"127.0.0.1:{srv.grpc_port}"

        r = _run("registry", "promote", "2", "--label", "stable", "--server", address, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["server"] == f"server {address} answers stable with version 2"
        assert manager.resolve("leukemia", label="stable").version == 2  # applied, not only written

        r = _run("registry", "rollback")  # no --server: the output must say the server was not told
        assert r.exit_code == 0, r.output
        assert "no server was told" in r.stdout and "--server HOST:PORT" in r.stdout
        assert manager.resolve("leukemia", label="stable").version == 2

        r = _run("registry", "promote", "1", "--label", "stable", "--server", address)
        assert r.exit_code == 0, r.output
        assert manager.resolve("leukemia", label="stable").version == 1
    finally:
        srv.stop()
