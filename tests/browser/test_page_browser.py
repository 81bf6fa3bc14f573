"""The prediction page in a real browser: Debian's headless Chromium driven by playwright-core.

A live `serving.server.Server` on a tiny exported model (ephemeral ports) serves the page; the
Node script `page.spec.mjs` uploads an image, reads the stage and the four bars, toggles the
heatmap, uploads a text file and simulates the server being unreachable. Skipped only when
Chromium itself is missing (`make test` installs it via `make system-deps`).
Set LEUKOFLOW_SCREENSHOT=1 (or a path) to save a screenshot of a stage answer (default docs/page-stage.png;
the committed docs/page.png, a referral, is taken by test_refer_browser.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fixtures.images import encode_png
from fixtures.model_base import start_server
from fixtures.quadrant_model import build_model, export, quadrant_images

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

pytestmark = pytest.mark.browser
MAX_MESSAGE_BYTES = 2 * 1024 * 1024


def screenshot_path(default_name: str) -> str | None:
    """Where LEUKOFLOW_SCREENSHOT asks for a screenshot: "1" means docs/<default_name>, else the path given."""
    value = os.environ.get("LEUKOFLOW_SCREENSHOT", "")
    if not value:
        return None
    return str(REPO / "docs" / default_name) if value in ("1", "true", "yes") else str(Path(value).resolve())


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """The real server, REST and page on an ephemeral port: version 1 labelled `stable`, 2 `canary`."""
    from serving.limits import Limits

    root = tmp_path_factory.mktemp("page-server")
    base = root / "models" / "leukemia"
    # Untrained, so every prediction is below this threshold and the low-confidence flag must show.
    export(build_model(seed=3), base / "1", threshold=0.99)
    export(build_model(seed=4), base / "2", threshold=0.99)
    config = root / "models.config"
    config.write_text(
        'model_config_list {\n  config {\n    name: "leukemia"\n'
        f'    base_path: "{base}"\n    model_platform: "tensorflow"\n'
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        '    version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }\n  }\n}\n'
    )
    # A small message limit: the page must take the server's limit (and the oversized upload stays cheap).
    limits = Limits(max_message_bytes=MAX_MESSAGE_BYTES)
    server = start_server(model_config_file=str(config), limits=limits)
    yield server
    server.stop()


def run_spec(spec: str, args: list[str]) -> dict:
    """Run a Node script of this folder against Chromium; its JSON result (the test fails on a failed check)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make system-deps installs Debian's chromium)")
    node = shutil.which("node")
    assert node, "node is needed to drive the browser (Debian's nodejs)"
    assert (HERE / "node_modules" / "playwright-core").is_dir(), "playwright-core is missing: run `make system-deps`"
    proc = subprocess.run(
        [node, str(HERE / spec), *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CHROMIUM_PATH": CHROMIUM},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and result["ok"], result.get("error") or proc.stderr
    return result


def test_page_in_headless_chromium(live_server, tmp_path):
    image = tmp_path / "smear.png"
    x, _ = quadrant_images(1, size=64, seed=7)
    image.write_bytes(encode_png(x[0]))
    second = tmp_path / "second.jpg"
    from PIL import Image

    Image.fromarray((x[0][::-1] * 255).astype("uint8")).save(second, format="JPEG")
    text = tmp_path / "notes.txt"
    text.write_text("This is a text file, not a smear image.\n")
    shot = screenshot_path("page-stage.png")

    url = f"http://127.0.0.1:{live_server.rest_port}"
    result = run_spec("page.spec.mjs", [url, str(image), str(second), str(text)] + ([shot] if shot else []))

    assert result["stage_class"] in ("Benign", "Early", "Pre", "Pro")
    assert result["bars"] == 4
    assert "version 1" in result["meta"] and "stable" in result["meta"]
    assert result["low_confidence"] == 1  # threshold 0.99 from the model's leukoflow.json
    assert "could not be read as an image" in result["text_error"]
    assert "not a supported format" in result["text_error"] or "not an image" in result["text_error"]
    assert "too large" in result["size_error"] and "1.5 MB" in result["size_error"]  # (2 MiB - JSON) * 3/4
    assert "Cannot reach the model server" in result["down_error"]
    assert "version 2" in result["canary_meta"] and "canary" in result["canary_meta"]
    if shot:
        assert Path(shot).stat().st_size > 10_000


def test_page_routes_through_the_real_rest_server(live_server):
    """The REST server hands `/`, `/ui/...` and `:explain` to the page, with its limits and error bodies."""
    import base64
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{live_server.rest_port}"

    def call(path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(url + path, body, {"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    status, headers, html = call("/")
    assert status == 200 and b"Decision support, not a diagnosis" in html
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = call("/ui/models/leukemia")
    info = json.loads(body)
    assert status == 200 and info["version"] == 1 and info["label"] == "stable"
    assert info["labels"] == {"stable": 1, "canary": 2}
    assert info["max_upload_bytes"] == (MAX_MESSAGE_BYTES - 4096) * 3 // 4  # the server's limit, not a default
    assert call("/no/such/page")[0] == 404

    x, _ = quadrant_images(1, seed=8)
    good = json.dumps({"instances": [{"b64": base64.b64encode(encode_png(x[0])).decode()}]}).encode()
    # The browser test before this one may leave its second card's explanation computing (one at a time,
    # max_concurrent_explains=1): the server answers 429 "retry shortly", and a client does just that.
    deadline = time.monotonic() + 60
    while (reply := call("/v1/models/leukemia/labels/stable:explain", good))[0] == 429 and time.monotonic() < deadline:
        assert b"explain is busy" in reply[2]
        time.sleep(0.5)
    status, _, body = reply
    answer = json.loads(body)
    assert status == 200 and answer["model_spec"] == {"name": "leukemia", "version": 1, "label": "stable"}
    assert base64.b64decode(answer["explanations"][0]["overlay_png_b64"]).startswith(b"\x89PNG")
    text = json.dumps({"instances": [{"b64": base64.b64encode(b"just text").decode()}]}).encode()
    status, _, body = call("/v1/models/leukemia:explain", text)
    assert status == 400 and "not an image" in json.loads(body)["error"]
    status, _, body = call("/v1/models/other:explain", good)
    assert status == 404 and json.loads(body)["error"] == "Servable not found for request: Latest(other)"
