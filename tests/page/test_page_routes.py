"""The page's HTTP routes: static files, /ui/model, :explain and their errors (no server needed)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np
import pytest
from fixtures.images import encode_png
from fixtures.quadrant_model import quadrant_images

from page.test_page_gradcam import png_header_only
from serving.page import routes


class _NotFound(LookupError):
    http_status = 404


class _BadLabel(ValueError):
    http_status = 400


@dataclass
class _Limits:
    max_message_bytes: int = 1_000_000
    max_image_pixels: int = 1_000_000


class Manager:
    """The slice of the server's manager the page uses: resolve(name, version=, label=) and limits."""

    def __init__(self, servable, labels: dict[str, int]):
        self.servable, self.label_map, self.limits = servable, labels, _Limits()

    def labels(self, name):
        return dict(self.label_map) if name == "leukemia" else {}

    def resolve(self, name, version=None, label=None):
        if name != "leukemia":
            raise _NotFound(f"Servable not found for request: Latest({name})")
        if label is not None:
            if label not in self.label_map:
                raise _BadLabel(f"Unrecognized servable version label: {label}")
            version = self.label_map[label]
        if version not in (None, self.servable.version):
            raise _NotFound(f"Servable not found for request: Specific({name}, {version})")
        return self.servable


@pytest.fixture(scope="module")
def manager(quadrant_model_dir):
    from components.servable import Servable

    return Manager(Servable.load(quadrant_model_dir), {"stable": 1})


def _body(*images: bytes, **extra) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images], **extra}).encode()


def _json(response):
    status, headers, body = response
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_page_and_its_files_are_served_with_a_strict_policy(manager):
    status, headers, body = routes.handle("GET", "/", {}, b"", manager)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    assert "Decision support, not a diagnosis" in html
    assert 'src="/ui/page.js"' in html and 'href="/ui/page.css"' in html
    assert "http://" not in html and "https://" not in html  # nothing from outside
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, kind in (("/ui/page.js", "text/javascript"), ("/ui/page.css", "text/css")):
        status, headers, body = routes.handle("GET", path, {}, b"", manager)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert b"http://" not in body and b"https://" not in body
    assert routes.handle("HEAD", "/", {}, b"", manager)[2] == b""
    assert routes.handle("GET", "/index.html?x=1", {}, b"", manager)[0] == 200


def test_other_paths_are_not_the_pages(manager):
    for path in ("/nope", "/ui/../serving/page/routes.py", "/ui/routes.py", "/v1/models/leukemia:predict", "/static/x"):
        assert routes.handle("GET", path, {}, b"", manager) is None, path
    assert routes.handle("POST", "/", {}, b"", manager)[0] == 405
    assert routes.handle("GET", "/v1/models/leukemia:explain", {}, b"", manager)[0] == 405


def test_model_info_names_version_label_threshold_and_limits(manager):
    status, info = _json(routes.handle("GET", "/ui/models/leukemia", {}, b"", manager))
    assert status == 200
    assert _json(routes.handle("GET", "/ui/model?name=leukemia", {}, b"", manager)) == (status, info)
    assert info["version"] == 1 and info["label"] == "stable"
    assert info["class_names"] == ["Benign", "Early", "Pre", "Pro"]
    assert info["low_confidence_threshold"] == 0.6 and info["threshold_source"] == "model"
    assert info["max_pixels"] == 1_000_000 and 0 < info["max_upload_bytes"] < 1_000_000
    assert info["explain"] is True
    assert info["labels"] == {"stable": 1}
    status, info = _json(routes.handle("GET", "/ui/models/leukemia/versions/1", {}, b"", manager))
    assert status == 200 and info["version"] == 1 and info["label"] is None and info["name"] == "leukemia"
    manager.label_map.pop("stable")
    try:  # no labels (a server started with --model_base_path): the latest version answers
        status, info = _json(routes.handle("GET", "/ui/model", {}, b"", manager))
        assert status == 200 and info["version"] == 1 and info["label"] is None
    finally:
        manager.label_map["stable"] = 1


def test_model_info_errors_are_readable(manager):
    status, body = _json(routes.handle("GET", "/ui/models/other", {}, b"", manager))
    assert status == 404 and body["error"] == "Servable not found for request: Latest(other)"
    status, body = _json(routes.handle("GET", "/ui/models/leukemia/labels/canary", {}, b"", manager))
    assert status == 400 and "Unrecognized servable version label: canary" in body["error"]
    status, body = _json(routes.handle("GET", "/ui/models/leukemia/versions/x", {}, b"", manager))
    assert status == 400 and "x" in body["error"]
    status, body = _json(routes.handle("GET", "/ui/model?name=other&label=stable", {}, b"", manager))
    assert status == 404 and "Latest(other)" in body["error"]


def test_default_threshold_when_the_model_has_none(manager, tmp_path):
    import shutil

    from components.servable import Servable

    copy = tmp_path / "leukemia" / "1"
    shutil.copytree(manager.servable.path, copy)
    meta = copy / "assets.extra" / "leukoflow.json"
    meta.write_text(
        json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "low_confidence_threshold"})
    )
    from components import settings

    other = Manager(Servable.load(copy), {})
    status, info = _json(routes.handle("GET", "/ui/model", {}, b"", other))
    assert info["low_confidence_threshold"] == settings.LOW_CONFIDENCE_THRESHOLD
    assert info["threshold_source"] == "default"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/leukemia:explain",
        "/v1/models/leukemia/versions/1:explain",
        "/v1/models/leukemia/labels/stable:explain",
    ],
)
def test_explain_answers_for_every_model_spec(manager, path):
    x, y = quadrant_images(2, seed=21)
    status, body = _json(routes.handle("POST", path, {}, _body(encode_png(x[0]), encode_png(x[1])), manager))
    assert status == 200, body
    assert body["model_spec"]["name"] == "leukemia" and body["model_spec"]["version"] == 1
    assert [e["class_index"] for e in body["explanations"]] == list(y)
    first = body["explanations"][0]
    assert base64.b64decode(first["overlay_png_b64"]).startswith(b"\x89PNG")
    assert np.array(first["heatmap"]["grid"]).ndim == 2


def test_explain_for_a_named_class_and_the_named_input_form(manager):
    x, _ = quadrant_images(1, seed=22)
    payload = json.dumps(
        {"instances": [{"images": {"b64": base64.b64encode(encode_png(x[0])).decode()}}], "class": "pro"}
    )
    status, body = _json(routes.handle("POST", "/v1/models/leukemia:explain", {}, payload.encode(), manager))
    assert status == 200 and body["explanations"][0]["class_name"] == "Pro"


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "JSON Parse error"),
        (b'{"inputs": []}', 400, '"instances"'),
        (b'{"instances": []}', 400, "No instances"),
        (b'{"instances": [{"b64": "@@@"}]}', 400, "not valid base64"),
        (b'{"instances": [42]}', 400, "instance 0"),
        (_body(b"plain text, not an image"), 400, "not an image"),
        (_body(b""), 400, "empty"),
        (_body(png_header_only(5000, 5000)), 400, "max_image_pixels=1000000"),
        (_body(*[b"x"] * (routes.MAX_EXPLAIN_INSTANCES + 1)), 400, "Too many instances"),
        (b"x" * 1_000_001, 400, "max_message_bytes=1000000"),
    ],
)
def test_explain_refuses_bad_input_readably(manager, body, status, words):
    got, answer = _json(routes.handle("POST", "/v1/models/leukemia:explain", {}, body, manager))
    assert got == status and words in answer["error"], answer
    assert "Traceback" not in answer["error"]


def test_explain_unknown_model_version_label(manager):
    x, _ = quadrant_images(1, seed=23)
    body = _body(encode_png(x[0]))
    cases = {
        "/v1/models/other:explain": (404, "Latest(other)"),
        "/v1/models/leukemia/versions/9:explain": (404, "Specific(leukemia, 9)"),
        "/v1/models/leukemia/labels/canary:explain": (400, "Unrecognized servable version label: canary"),
        "/v1/models/leukemia/versions/abc:explain": (400, "abc"),
    }
    for path, (status, words) in cases.items():
        got, answer = _json(routes.handle("POST", path, {}, body, manager))
        assert got == status and words in answer["error"], (path, answer)


def test_model_info_says_whether_the_model_refers(manager, calibrated_export):
    from components import model_metadata
    from components.servable import Servable

    _, older = _json(routes.handle("GET", "/ui/models/leukemia", {}, b"", manager))
    assert older["referral"] is None  # exported without a calibration: the page shows what it always did
    calibrated = Manager(Servable.load(calibrated_export), {"stable": 1})
    status, info = _json(routes.handle("GET", "/ui/models/leukemia", {}, b"", calibrated))
    meta = model_metadata.read(calibrated_export)
    assert status == 200 and 0 < meta.ood_val_referral_rate < 1
    assert info["referral"] == {
        "ood_val_referral_rate": meta.ood_val_referral_rate,
        "conformal_coverage": meta.conformal_coverage,
    }
