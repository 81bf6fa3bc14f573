"""Tests of the four data steps: validate, dedup, preprocess, split."""
