"""`leukoflow predict IMAGE...`: classify images through a TensorFlow Serving endpoint (ours or the real one)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer

from components.cli_output import emit, fail

app = typer.Typer(add_completion=False)
log = logging.getLogger(__name__)

CHUNK = 16  # images per Predict request: one round trip for a handful, bounded messages for many


def _human(result: dict) -> str:
    lines = []
    for item in result["predictions"]:
        version = f"  [{result['model']} v{item['model_version']}]" if item.get("model_version") is not None else ""
        if item.get("refer"):  # the model refers this image: no stage headline, the reason instead
            lines.append(f"{item['image']}: refer: {item['reason']}{version}")
        else:
            lines.append(f"{item['image']}: {item['label']} ({item['confidences'][item['label']]:.3f}){version}")
        lines.append("  " + "  ".join(f"{name} {p:.3f}" for name, p in item["confidences"].items()))
    return "\n".join(lines)


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG, BMP, GIF, WebP; TIFF is converted to PNG)."),
    server: str = typer.Option("127.0.0.1:8500", "--server", help="gRPC address of TensorFlow Serving, host:port."),
    label: Optional[str] = typer.Option(None, "--label", help="Version label to ask for: stable or canary."),
    version: Optional[int] = typer.Option(None, "--version", help="Exact model version (instead of a label)."),
    model: str = typer.Option("", "--model-name", help="Served model name (default: the project's, 'leukemia')."),
    deadline: float = typer.Option(10.0, "--deadline", help="Seconds per request, retries on UNAVAILABLE included."),
    root_cert: Optional[Path] = typer.Option(None, "--root-cert", help="PEM root certificate: use TLS."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print each image's class and every class's confidence.

    A model that knows when it does not know (docs/architecture.md) may refer an image: then the line
    says `refer:` and why (not like the training images, or the stages it could be) instead of a stage.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the official stubs import TensorFlow
    from components import domain, settings
    from serving.client import ServerUnavailable, ServingClient, ServingError, prepare_image

    if label and version is not None:
        fail("give --label or --version, not both", as_json)
    payloads: list[bytes] = []
    for path in images:
        if not path.is_file():
            fail(f"image not found: {path}", as_json)
        try:
            payloads.append(prepare_image(path.read_bytes()))
        except (domain.ImageDecodeError, ValueError) as exc:
            fail(f"{path}: not a readable image ({exc})", as_json)

    client = ServingClient(
        target=server, model_name=model or settings.SERVED_MODEL_NAME, deadline_s=deadline, root_cert=root_cert
    )
    predictions = []
    try:
        with client:
            for start in range(0, len(payloads), CHUNK):
                predictions += client.predict(payloads[start : start + CHUNK], label=label, version=version)
    except ServerUnavailable as exc:
        fail(
            f"{exc.message}. Is the server running (`leukoflow serve` or TensorFlow Serving) and is --server right?",
            as_json,
            code=2,
            server=server,
        )
    except ServingError as exc:
        fail(f"the server refused the request: {exc}", as_json, code=1, server=server)

    result = {
        "server": server,
        "model": client.model_name,
        "label": label,
        "version": version,
        "predictions": [{"image": str(path), **p.to_dict()} for path, p in zip(images, predictions)],
    }
    emit(result, as_json, _human)
