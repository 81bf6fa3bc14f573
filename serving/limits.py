"""Request limits: message size, pixels per image (decompression bombs), batch size, accepted formats.

Before an encoded image reaches the graph only its header is read (format, dimensions): that is
enough to refuse unsupported formats and decompression bombs, and costs microseconds. The full decode
happens once, in the graph, as it would in TensorFlow Serving; when the graph refuses a request's
images, `find_undecodable` decodes them with Pillow to name the one that failed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from serving.errors import invalid_argument

# What tf.io.decode_image reads; TIFF and the rest are refused (the client converts TIFF).
ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP"})


@dataclass(frozen=True)
class Limits:
    """The server's limits; each refusal names the one it hit."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_batch_size: int = 256
    max_request_pixels: int = 200_000_000  # all images of one request together: bounds decode time and memory
    max_concurrent_explains: int = 1  # Grad-CAM runs at once (the page's :explain); beyond: RESOURCE_EXHAUSTED/429


def check_batch(alias: str, n: int, limits: Limits) -> None:
    """Refuse empty and oversized batches."""
    if n == 0:
        raise invalid_argument(f"input {alias!r} is an empty batch: at least one element is required")
    if n > limits.max_batch_size:
        raise invalid_argument(
            f"input {alias!r} has a batch of {n}, more than the limit max_batch_size={limits.max_batch_size}"
        )


def check_message(size: int, limits: Limits) -> None:
    """Refuse a request body over max_message_bytes."""
    if size > limits.max_message_bytes:
        raise invalid_argument(
            f"request of {size} bytes is larger than the limit max_message_bytes={limits.max_message_bytes}"
        )


def image_header(alias: str, index: int, data: bytes, limits: Limits) -> tuple[str, int, int]:
    """Read only the header: enforce the format and max_image_pixels; returns (format, width, height).

    Raises INVALID_ARGUMENT naming `alias[index]` for anything TF's decoder would not read or that is too large.
    """
    from PIL import Image, UnidentifiedImageError

    where = f"input {alias}[{index}]"
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise invalid_argument(f"{where} is empty: expected encoded image bytes (JPEG, PNG, BMP, GIF or WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise invalid_argument(
            f"{where} is larger than the limit max_image_pixels={limits.max_image_pixels}: {exc}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise invalid_argument(
            f"{where} is not an image in a supported format (JPEG, PNG, BMP, GIF, WebP): "
            f"{len(data)} bytes starting {bytes(data[:8])!r}"
        ) from None
    with img:
        fmt = img.format or "unknown"
        width, height = img.size
    if fmt not in ACCEPTED_FORMATS:
        raise invalid_argument(
            f"{where} is {fmt}, not a supported format (JPEG, PNG, BMP, GIF, WebP); convert it first"
        )
    if width * height > limits.max_image_pixels:
        raise invalid_argument(
            f"{where} is {width}x{height} = {width * height} pixels, more than the limit "
            f"max_image_pixels={limits.max_image_pixels}"
        )
    if width == 0 or height == 0:
        raise invalid_argument(f"{where} has no pixels ({width}x{height})")
    return fmt, width, height


def check_images(alias: str, values: list[bytes], limits: Limits) -> list[tuple[str, int, int]]:
    """Check every encoded image's header, then the request's pixel total; returns (format, width, height) each."""
    headers = [image_header(alias, i, v, limits) for i, v in enumerate(values)]
    total = sum(w * h for _, w, h in headers)
    if total > limits.max_request_pixels:
        raise invalid_argument(
            f"input {alias} holds {total} pixels in {len(values)} images, more than the limit "
            f"max_request_pixels={limits.max_request_pixels}"
        )
    return headers


def decode_rgb(alias: str, index: int, data: bytes, fmt: str = "image") -> np.ndarray:
    """Fully decode one encoded image to RGB uint8; INVALID_ARGUMENT naming `alias[index]` if it cannot be."""
    from components import domain

    try:
        return domain.load_rgb(bytes(data))
    except domain.ImageDecodeError as exc:
        raise invalid_argument(f"input {alias}[{index}] cannot be decoded ({fmt}): {exc.__cause__ or exc}") from None


def find_undecodable(alias: str, values: list[bytes], limits: Limits) -> None:
    """Raise INVALID_ARGUMENT naming the first image of `values` that does not decode; return if all do.

    Called only after the graph refused a request, so the client learns which image was bad.
    """
    for i, (v, (fmt, _, _)) in enumerate(zip(values, check_images(alias, values, limits))):
        decode_rgb(alias, i, v, fmt)


def example_images(examples: list[bytes]) -> list[bytes]:
    """image/encoded of each serialized tf.Example (INVALID_ARGUMENT when one is malformed or has none)."""
    from tensorflow.core.example import example_pb2

    out = []
    for i, raw in enumerate(examples):
        ex = example_pb2.Example()
        try:
            ex.ParseFromString(bytes(raw))
        except Exception:  # noqa: BLE001 - any parse failure is the caller's input
            raise invalid_argument(f"input examples[{i}] is not a serialized tf.Example") from None
        feat = ex.features.feature.get("image/encoded")
        if feat is None or not feat.bytes_list.value:
            raise invalid_argument(f"input examples[{i}] has no image/encoded bytes feature")
        out.append(feat.bytes_list.value[0])
    return out
