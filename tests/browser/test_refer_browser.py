"""The page's refer state in a real browser: a live server on the calibrated tiny model (issue 12).

`refer.spec.mjs` uploads a noise image the model must refer (the refer box with its reason, no stage
headline, the bars and the heatmap still there) and a smear it accepts (a stage). Skipped only when
Chromium is missing, as test_page_browser.py. LEUKOFLOW_SCREENSHOT=PATH saves a screenshot of the refer state.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fixtures.calibrated_model import ood_images, smear_images
from fixtures.images import encode_png
from fixtures.model_base import start_server

from browser.test_page_browser import run_spec

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def live_server(calibrated_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("refer-page") / "leukemia"
    base.mkdir()
    shutil.copytree(calibrated_export, base / "1")
    server = start_server(base)
    yield server
    server.stop()


def _accepted_smear(server) -> bytes:
    """A synthetic smear the served model answers with a stage (not referred), chosen through the server."""
    from serving.client import ServingClient

    smears = [encode_png(x) for x in smear_images(8, seed=41)[0]]
    with ServingClient(target=f"127.0.0.1:{server.grpc_port}") as client:
        answers = client.predict(smears)
    return next(b for b, p in zip(smears, answers) if p.refer is False)


def test_refer_state_in_headless_chromium(live_server, tmp_path):
    smear, noise = tmp_path / "smear.png", tmp_path / "noise.png"
    smear.write_bytes(_accepted_smear(live_server))
    noise.write_bytes(encode_png(ood_images(seed=41)["noise"]))
    shot = os.environ.get("LEUKOFLOW_SCREENSHOT") or None
    url = f"http://127.0.0.1:{live_server.rest_port}"
    result = run_spec("refer.spec.mjs", [url, str(smear), str(noise)] + ([str(Path(shot).resolve())] if shot else []))

    assert result["refer_reason"] == "out_of_distribution"
    assert "not like the images the model was trained on" in result["refer_text"]
    assert result["referred_stage"] == 0 and result["referred_bars"] == 4
    assert result["stage_class"] in ("Benign", "Early", "Pre", "Pro")
    assert "refers images unlike its training images" in result["meta"]
