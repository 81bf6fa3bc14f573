"""Confirm and correct on the page in a real browser, with the server's cases folder on: the labels land in
the case store's ledger with the reviewer, the site and the request id of the answer they label.

`cases.spec.mjs` confirms an accepted smear, corrects it (a conflict: one image, two labels) and labels a
referred image. Skipped only when Chromium is missing, as test_page_browser.py. LEUKOFLOW_SCREENSHOT=PATH saves
a screenshot of the review controls and their outcomes.
"""

from __future__ import annotations

import re
import shutil

import pytest
from fixtures.calibrated_model import encode_png, ood_images
from fixtures.model_base import start_server
from fixtures.synthetic import make_synthetic_dataset

from browser.test_page_browser import run_spec, screenshot_path
from browser.test_refer_browser import _accepted_smear

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cases_server(calibrated_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("cases-page")
    base = root / "models" / "leukemia"
    base.mkdir(parents=True)
    shutil.copytree(calibrated_export, base / "1")
    make_synthetic_dataset(root / "data", per_class=3, size=64, seed=5, defects=False)
    server = start_server(base, cases_dir=str(root / "cases"), cases_base_data=str(root / "data"))
    yield server, root / "cases"
    server.stop()


def test_confirm_and_correct_in_headless_chromium(cases_server, tmp_path):
    from components.cases import store

    server, cases = cases_server
    smear, noise = tmp_path / "smear.png", tmp_path / "noise.png"
    smear.write_bytes(_accepted_smear(server))
    noise.write_bytes(encode_png(ood_images(seed=43)["noise"]))
    shot = screenshot_path("page-cases.png")
    url = f"http://127.0.0.1:{server.rest_port}"
    result = run_spec("cases.spec.mjs", [url, str(smear), str(noise)] + ([shot] if shot else []))

    stage = result["stage_class"]
    assert result["confirm_text"].startswith("Confirm ") and stage not in {
        o["value"] for o in result["correct_options"]
    }
    assert "kept on this server as a case" in result["storage_note"]
    assert result["confirmed"]["text"].endswith("labelled by dr-page (lab-page).")
    assert result["corrected"]["outcome"] == "conflict" and "kept out of training" in result["corrected"]["text"]

    ledger = store.read_ledger(cases)
    assert len(ledger) == 2 and set(ledger["reviewer"]) == {"dr-page"} and set(ledger["site"]) == {"lab-page"}
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ledger["source_request_id"])  # each answer's id
    confirmed = ledger[ledger["path"].str.contains("conflicts/")].iloc[0]  # the smear, then corrected: a conflict
    assert confirmed["label"] == stage and confirmed["status"] == "conflict"
    assert (cases / confirmed["path"]).read_bytes() == smear.read_bytes()  # the very bytes uploaded
    assert f"then {result['corrected_to']} by dr-page" in confirmed["note"]
    referred = ledger[ledger["status"] == "ok"].iloc[0]
    assert referred["label"] == "Pro" and (cases / referred["path"]).read_bytes() == noise.read_bytes()
