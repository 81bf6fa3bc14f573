"""Defect 5: :explain gets predict's limits and its own bounded concurrency (it used to starve prediction)."""

from __future__ import annotations

import base64
import threading

import pytest
import requests
from fixtures.images import encode_png
from fixtures.model_base import start_server
from fixtures.quadrant_model import quadrant_images
from page.test_page_gradcam import png_header_only

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(quadrant_model_dir):
    from serving.limits import Limits

    srv = start_server(
        quadrant_model_dir.parent,
        warmup=False,
        limits=Limits(max_image_pixels=10_000_000, max_request_pixels=15_000_000, max_batch_size=2),
    )
    yield srv
    srv.stop()


def _explain(server, *images: bytes) -> requests.Response:
    body = {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
    return requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia:explain", json=body, timeout=60)


def test_explain_has_the_request_pixel_and_batch_limits_of_predict(server):
    two_bombs = [png_header_only(3000, 3000)] * 2  # each under max_image_pixels, together over max_request_pixels
    r = _explain(server, *two_bombs)
    assert r.status_code == 400 and "max_request_pixels=15000000" in r.json()["error"]
    x, _ = quadrant_images(3, seed=1)
    r = _explain(server, *(encode_png(img) for img in x))
    assert r.status_code == 400 and "Too many instances: 3" in r.json()["error"]


def test_explain_beyond_its_concurrency_is_refused_and_predict_still_answers(server):
    from serving.page.routes import explain_slots

    x, _ = quadrant_images(1, seed=2)
    image = encode_png(x[0])
    slots = explain_slots(server.core.manager)
    assert slots.acquire(timeout=30)  # an explanation is running
    try:
        r = _explain(server, image)
        assert r.status_code == 429 and "explain is busy" in r.json()["error"]
        body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
        p = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia:predict", json=body, timeout=60)
        assert p.status_code == 200
    finally:
        slots.release()
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(_explain(server, image).status_code)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert 200 in codes and set(codes) <= {200, 429}
    assert _explain(server, image).status_code == 200
