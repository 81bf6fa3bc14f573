"""Split: stratified, seeded, group-aware train/val/test split of the deduplicated images."""
