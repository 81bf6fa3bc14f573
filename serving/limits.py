"""Request limits: message size, pixels per image (decompression bombs), batch size, accepted formats.

Encoded images are checked and fully decoded with Pillow before they reach the graph (or a shared
batch), so one bad image is refused on its own, with a message naming the input and the limit,
instead of failing a whole batch or exhausting memory inside tf.io.decode_image.
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


def decode_checked(alias: str, index: int, data: bytes, limits: Limits) -> np.ndarray:
    """Read the header, enforce format and max_image_pixels, then decode fully to RGB uint8.

    Raises INVALID_ARGUMENT naming `alias[index]` for anything TF's decoder would not read or that is too large.
    """
    from PIL import Image, UnidentifiedImageError

    from components import domain

    where = f"input {alias}[{index}]"
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise invalid_argument(f"{where} is empty: expected encoded image bytes (JPEG, PNG, BMP, GIF or WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise invalid_argument(f"{where} is larger than the limit max_image_pixels={limits.max_image_pixels}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise invalid_argument(
            f"{where} is not an image in a supported format (JPEG, PNG, BMP, GIF, WebP): "
            f"{len(data)} bytes starting {bytes(data[:8])!r}"
        ) from None
    with img:
        if img.format not in ACCEPTED_FORMATS:
            raise invalid_argument(
                f"{where} is {img.format}, not a supported format (JPEG, PNG, BMP, GIF, WebP); convert it first"
            )
        width, height = img.size
        if width * height > limits.max_image_pixels:
            raise invalid_argument(
                f"{where} is {width}x{height} = {width * height} pixels, more than the limit "
                f"max_image_pixels={limits.max_image_pixels}"
            )
        if width == 0 or height == 0:
            raise invalid_argument(f"{where} has no pixels ({width}x{height})")
    try:
        return domain.load_rgb(bytes(data))
    except domain.ImageDecodeError as exc:
        raise invalid_argument(f"{where} cannot be decoded ({img.format}): {exc.__cause__ or exc}") from None
