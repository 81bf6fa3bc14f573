"""The perceptual hash of an image: validation records it while the image is decoded, dedup compares it."""

from __future__ import annotations


def phash_rgb(rgb) -> str:
    """imagehash's 64-bit pHash of a uint8 RGB array from `domain.load_rgb` (or that array as a PIL image), as 16 hex digits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)))
