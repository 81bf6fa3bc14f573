"""Dedup: exact (sha256) and perceptual (pHash) duplicate groups, label conflicts excluded."""
