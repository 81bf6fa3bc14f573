"""The page's refer state in a real browser: a live server on the calibrated tiny model.

`refer.spec.mjs` uploads a noise image the model must refer (the refer box with its reason, no stage
headline, the bars and the heatmap still there) and a smear it accepts (a stage). Skipped only when
Chromium is missing, as test_page_browser.py. LEUKOFLOW_SCREENSHOT=1 saves the screenshot of the refer state that
the README and the model card show (docs/page.png); LEUKOFLOW_SCREENSHOT=PATH saves it elsewhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures.calibrated_model import ood_images, smear_images
from fixtures.images import encode_png
from fixtures.model_base import start_server

from browser.test_page_browser import run_spec, screenshot_path

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
    shot = screenshot_path("page.png")
    url = f"http://127.0.0.1:{live_server.rest_port}"
    result = run_spec("refer.spec.mjs", [url, str(smear), str(noise)] + ([shot] if shot else []))

    assert result["refer_reason"] == "out_of_distribution"
    assert "not like the images the model was trained on" in result["refer_text"]
    assert result["referred_stage"] == 0 and result["referred_bars"] == 4
    assert result["stage_class"] in ("Benign", "Early", "Pre", "Pro")
    assert "refers images unlike its training images" in result["meta"]
    if shot:
        assert result["screenshot"] == shot and Path(shot).stat().st_size > 10_000
