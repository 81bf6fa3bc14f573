"""Labelled cases from pathologists: a validated, deduplicated, DVC-versioned store, a review queue, kept referrals."""
