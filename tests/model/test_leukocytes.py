"""The leukocyte segmentation (components/leukocytes.py) on tiny drawn smears whose cells are known."""

from __future__ import annotations

import numpy as np
import pytest

from components import leukocytes

SIDE = 64
BACKGROUND = (238, 232, 205)  # a yellowish lamp: saturation would call it stained
RED_CELL = (200, 185, 200)  # lavender-grey: absorbs the three channels about equally
WHITE_CELL = (120, 60, 170)  # purple: absorbs green


def smear(white_cells: list[tuple[int, int, int]], red_cells: int = 6, seed: int = 0) -> np.ndarray:
    """A SIDE x SIDE uint8 smear: background, red-cell discs, and the given (y, x, radius) white cells."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    image = np.empty((SIDE, SIDE, 3), np.float64)
    image[:] = BACKGROUND
    for _ in range(red_cells):
        cy, cx = rng.uniform(6, SIDE - 6, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = RED_CELL
    for cy, cx, r in white_cells:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = WHITE_CELL
    image += rng.normal(0, 2, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_mask_covers_the_white_cell_and_leaves_red_cells_and_a_yellow_background_out():
    image = smear([(20, 40, 8)])
    mask = leukocytes.leukocyte_mask(image)
    cell = disc(20, 40, 8)
    assert mask[cell].mean() > 0.95
    # Outside the cell and its dilation rim, nothing (the red cells and the yellow background).
    assert not mask[~disc(20, 40, 8 + 3)].any()


def test_no_white_cell_gives_an_empty_mask():
    assert not leukocytes.leukocyte_mask(smear([])).any()


def test_removal_fills_the_cells_with_the_background_and_leaves_nothing_to_find():
    image = smear([(20, 40, 8), (45, 15, 6)])
    removed = leukocytes.remove_leukocytes(image)
    assert removed.dtype == np.uint8
    assert not leukocytes.leukocyte_mask(removed).any()
    centre = removed[20, 40].astype(int)
    assert np.abs(centre - np.array(BACKGROUND)).max() <= 6
    far = ~disc(20, 40, 11) & ~disc(45, 15, 9)
    assert np.array_equal(removed[far], image[far])


def test_paste_moves_the_cells_of_one_image_onto_the_other_background():
    source = smear([(20, 40, 8)], seed=1)
    target = smear([(45, 15, 6)], seed=2)
    pasted = leukocytes.paste_leukocytes(source, target)
    mask = leukocytes.leukocyte_mask(pasted)
    assert mask[disc(20, 40, 8)].mean() > 0.95
    assert not mask[disc(45, 15, 6)].any()  # the target's own cell is gone


def test_paste_needs_images_of_one_size():
    with pytest.raises(ValueError, match="differ"):
        leukocytes.paste_leukocytes(smear([]), smear([])[:32])


def test_mask_rejects_a_non_rgb_array():
    with pytest.raises(ValueError, match="RGB"):
        leukocytes.leukocyte_mask(np.zeros((8, 8), np.uint8))


def test_graph_fraction_agrees_with_the_host_mask():
    import tensorflow as tf

    images = [smear([(20, 40, 8)]), smear([]), smear([(20, 20, 9), (44, 44, 9)], seed=3)]
    batch = tf.constant(np.stack(images), tf.float32) / 255.0
    graph = leukocytes.tf_leukocyte_fraction(batch).numpy()
    host = np.array([leukocytes.leukocyte_mask(i).mean() for i in images])
    assert graph[1] < leukocytes.MIN_LEUKOCYTE_FRACTION <= graph[0]
    # The host mask is dilated by its rim and the graph's is not: the same cells, within a rim's area.
    assert np.all(np.abs(graph - host) < 0.05)
    assert float(leukocytes.tf_leukocyte_fraction(batch[0]).numpy()) == pytest.approx(graph[0])
