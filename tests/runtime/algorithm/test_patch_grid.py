"""The patch geometry (runtime.algorithm.patch_grid): GLNet's rule, full coverage, padding of small images."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.algorithm.patch_grid import axis_starts, make_grid
from runtime.errors import InputError


def coverage(grid) -> np.ndarray:
    counts = np.zeros((grid.padded_height, grid.padded_width), dtype=np.int32)
    p = grid.patch_size
    for y, x in grid.origins():
        counts[y : y + p, x : x + p] += 1
    return counts


def overlaps(starts: tuple[int, ...], patch_size: int) -> list[int]:
    return [a + patch_size - b for a, b in zip(starts, starts[1:])]


def test_deepglobe_grid_is_6_by_6_at_stride_388_with_the_last_patch_clamped():
    grid = make_grid(2448, 2448, 508, 50)
    assert len(grid) == 36 and grid.rows == 6 and grid.cols == 6
    assert grid.stride_y == grid.stride_x == 388
    assert grid.ys == grid.xs == (0, 388, 776, 1164, 1552, 1940)
    assert grid.ys[-1] + 508 == 2448  # clamped to the border
    assert grid.padding == (0, 0)


@pytest.mark.parametrize(
    ("height", "width", "patch", "overlap"),
    [(1000, 3001, 508, 50), (2448, 2448, 508, 50), (509, 1017, 508, 50), (777, 130, 128, 16), (4000, 300, 128, 16)],
)
def test_grid_covers_every_pixel_with_at_least_the_minimum_overlap(height, width, patch, overlap):
    grid = make_grid(height, width, patch, overlap)
    assert coverage(grid)[:height, :width].min() >= 1
    for starts in (grid.ys, grid.xs):
        assert list(starts) == sorted(set(starts))
        assert starts[0] == 0
        assert all(o >= overlap for o in overlaps(starts, patch))
    assert grid.ys[-1] + patch == grid.padded_height
    assert grid.xs[-1] + patch == grid.padded_width


def test_awkward_size_1000_by_3001():
    grid = make_grid(1000, 3001, 508, 50)
    assert grid.ys == (0, 246, 492)  # 3 rows: 2 would overlap by only 16 px
    assert grid.xs == (0, 416, 832, 1248, 1664, 2080, 2493)  # last one clamped (2496 -> 2493)
    assert len(grid) == 3 * 7
    assert grid.padding == (0, 0)


def test_an_image_smaller_than_a_patch_is_padded_and_the_padding_recorded():
    grid = make_grid(300, 200, 508, 50)
    assert len(grid) == 1 and grid.origins() == [(0, 0)]
    assert (grid.padded_height, grid.padded_width) == (508, 508)
    assert grid.padding == (208, 308)
    assert coverage(grid)[:300, :200].min() == 1


def test_boxes_are_x1_y1_x2_y2_in_row_major_order():
    grid = make_grid(1000, 3001, 508, 50)
    boxes = grid.boxes()
    assert boxes.dtype == np.float32 and boxes.shape == (len(grid), 4)
    y, x = grid.origins()[8]  # second row (7 columns), second column
    assert (y, x) == (246, 416)
    np.testing.assert_array_equal(boxes[8], [x, y, x + 508, y + 508])
    np.testing.assert_array_equal(grid.boxes([8, 0]), boxes[[8, 0]])


def test_rows_above_final_row_after_are_touched_by_no_later_patch():
    grid = make_grid(2448, 2448, 508, 50)
    for row in range(grid.rows):
        limit = grid.final_row_after(row)
        assert all(y >= limit for y in grid.ys[row + 1 :])
    assert grid.final_row_after(grid.rows - 1) == 2448


def test_axis_starts_single_patch_and_invalid_geometry():
    assert axis_starts(508, 508, 50) == ((0,), 0)
    with pytest.raises(InputError):
        make_grid(100, 100, 128, 128)
    with pytest.raises(InputError):
        make_grid(0, 100, 128, 16)
