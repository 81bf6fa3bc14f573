"""Preprocess: RGB, resize with the serving graph's ops, TFRecord shards."""
