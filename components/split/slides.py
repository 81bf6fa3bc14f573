"""Pseudo-slides: images grouped by what surrounds their leukocytes, so that one slide's images stay in one split.

The public data has no patient or slide ids, and an image-level split puts images of one slide in train and
in test: a model that recognises the slide (its red cells, background, stain and camera) scores well on
test without reading a single leukocyte. The slide is what is left once the leukocytes are gone, so:

1. **context features** of each image: components/leukocytes.py removes its leukocytes (filled with the
   background colour), and the shortcut baseline's colour statistics (RGB mean and spread, 16-bin HSV
   histograms; components/colour_statistics.py) are taken on what remains, at FEATURE_SIDE;
2. standardised, then **clustered within each class** (a slide shows one patient, so one stage) by Ward's
   agglomerative clustering into round(images / IMAGES_PER_SLIDE) clusters, at least `min_groups`;
3. **duplicate groups stay whole**: a dedup group joins the pseudo-slide of most of its members.

IMAGES_PER_SLIDE is the public data's own average: 3,256 images from 89 patients (Aria et al., 2021), one
smear each, about 37 images. That is an assumption about how the images were taken, not a measurement:
the groups are pseudo-slides, and a true slide may be split between two of them or two slides of a
similar stain merged. They err towards keeping apart what looks alike, which is the safe direction.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from components import domain

IMAGES_PER_SLIDE: int = 37  # 3,256 images / 89 patients in the public dataset's description


FEATURE_SIDE: int = 96  # global colour statistics hardly depend on resolution (the shortcut baseline's size)


def context_features(rgb: np.ndarray) -> np.ndarray:
    """Colour statistics (components/colour_statistics.py, 54 numbers) of an image with its leukocytes removed."""
    from PIL import Image

    from components import leukocytes
    from components.colour_statistics import colour_features

    removed = leukocytes.remove_leukocytes(rgb)
    small = np.asarray(Image.fromarray(removed, "RGB").resize((FEATURE_SIDE, FEATURE_SIDE), Image.BILINEAR))
    return colour_features(small[None])[0]


def cluster_slides(
    features: np.ndarray, labels: Iterable[int | str], min_groups: int, images_per_slide: int = IMAGES_PER_SLIDE
) -> list[str]:
    """A pseudo-slide id per row ("<class>-slide-<k>"), clustering each class's standardised features apart."""
    from sklearn.cluster import AgglomerativeClustering

    features = np.asarray(features, dtype=np.float64)
    labels = [domain.canonical_class(v) if isinstance(v, str) else domain.CLASS_NAMES[int(v)] for v in labels]
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    spread = features.std(axis=0)
    scaled = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    ids = [""] * len(labels)
    for label in sorted(set(labels)):
        rows = [i for i, v in enumerate(labels) if v == label]
        count = min(len(rows), max(min_groups, round(len(rows) / images_per_slide)))
        if count <= 1:
            assignment = np.zeros(len(rows), dtype=int)
        else:
            assignment = AgglomerativeClustering(n_clusters=count, linkage="ward").fit_predict(scaled[rows])
        for row, k in zip(rows, assignment):
            ids[row] = f"{label}-slide-{int(k):03d}"
    return ids


def merge_duplicate_groups(slide_ids: list[str], duplicate_groups: list[str]) -> list[str]:
    """Every member of a duplicate group gets the pseudo-slide most of its members have (ties: the first id)."""
    from collections import Counter

    votes: dict[str, Counter] = {}
    for slide, group in zip(slide_ids, duplicate_groups):
        votes.setdefault(group, Counter())[slide] += 1
    chosen = {g: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for g, c in votes.items()}
    return [chosen[g] for g in duplicate_groups]
