"""The ten-line REST client of docs/integration.md runs against a live server and says "refer" where it must."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.calibrated_model import encode_png, ood_images, smear_images

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def documented_client() -> str:
    text = (REPO / "docs" / "integration.md").read_text()
    found = re.search(r"## A client in ten lines.*?```python\n(.*?)```", text, re.S)
    assert found, "docs/integration.md lost its client"
    return found.group(1)


def test_the_documented_client_is_ten_lines_and_reads_refer(calibrated_export, tmp_path):
    from serving.server import Server, ServerOptions

    code = documented_client()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    base = tmp_path / "models" / "leukemia"
    shutil.copytree(calibrated_export, base / "1")
    config = tmp_path / "models.config"
    config.write_text(
        'model_config_list {\n  config {\n    name: "leukemia"\n'
        f'    base_path: "{base}"\n    model_platform: "tensorflow"\n'
        '    version_labels { key: "stable" value: 1 }\n  }\n}\n'
    )
    images = []
    for i, pixels in enumerate(smear_images(3, seed=41)[0]):
        images.append(tmp_path / f"smear{i}.png")
        images[-1].write_bytes(encode_png(pixels))
    images.append(tmp_path / "noise.png")
    images[-1].write_bytes(encode_png(ood_images(seed=41)["noise"]))

    server = Server(
        ServerOptions(port=0, rest_api_port=0, model_config_file=str(config), file_system_poll_wait_seconds=0)
    ).start()
    try:
        script = tmp_path / "client.py"
        script.write_text(code.replace("127.0.0.1:8501", f"127.0.0.1:{server.rest_port}"))
        proc = subprocess.run(
            [sys.executable, str(script), *map(str, images)], capture_output=True, text=True, timeout=120
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    answers = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert answers[str(images[-1])] == "refer to a pathologist (not like the training images)"
    staged = [answers[str(p)] for p in images[:-1] if not answers[str(p)].startswith("refer")]
    assert staged and all(re.fullmatch(r"(Benign|Early|Pre|Pro) \d\.\d\d", a) for a in staged)
