"""Seam-free blending of overlapping patch logits, row finalisation, and torch-exact upsampling."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.algorithm.patch_grid import make_grid
from runtime.algorithm.stitching import Stitcher, patch_weights, upsample_logits, upsample_matrix


def whole_image_blend(grid, logits: np.ndarray) -> np.ndarray:
    """The reference's accumulation over the whole padded image, then argmax and crop."""
    p = grid.patch_size
    weights = patch_weights(p)
    total = np.zeros((logits.shape[1], grid.padded_height, grid.padded_width), np.float32)
    weight_sum = np.zeros((grid.padded_height, grid.padded_width), np.float32)
    for (y, x), patch in zip(grid.origins(), logits):
        total[:, y : y + p, x : x + p] += patch * weights
        weight_sum[y : y + p, x : x + p] += weights
    return (total / weight_sum).argmax(0).astype(np.uint8)[: grid.height, : grid.width]


def naive_overwrite(grid, logits: np.ndarray) -> np.ndarray:
    p = grid.patch_size
    out = np.zeros((logits.shape[1], grid.padded_height, grid.padded_width), np.float32)
    for (y, x), patch in zip(grid.origins(), logits):
        out[:, y : y + p, x : x + p] = patch
    return out.argmax(0).astype(np.uint8)[: grid.height, : grid.width]


def stitch(grid, logits: np.ndarray, num_classes: int, batch: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    stitcher = Stitcher(grid, num_classes)
    mask = np.full((grid.height, grid.width), 255, np.uint8)
    bands = []
    for start in range(0, len(logits), batch):
        for top, rows in stitcher.add(logits[start : start + batch]):
            assert rows.shape[1] == grid.width
            mask[top : top + len(rows)] = rows
            bands.append((top, len(rows)))
    assert stitcher.done
    return mask, bands


@pytest.mark.parametrize("height,width,batch", [(300, 470, 4), (64, 64, 1), (90, 260, 7), (511, 128, 3)])
def test_band_wise_finalisation_equals_whole_image_accumulation(height, width, batch):
    grid = make_grid(height, width, 128, 16)
    rng = np.random.default_rng(height + width)
    logits = rng.normal(size=(len(grid), 5, 128, 128)).astype(np.float32)
    mask, bands = stitch(grid, logits, 5, batch)
    np.testing.assert_array_equal(mask, whole_image_blend(grid, logits))
    tops = [t for t, _ in bands]
    assert tops == sorted(tops) and tops[0] == 0
    assert sum(n for _, n in bands) == height  # every row handed out exactly once, in order
    if grid.rows > 1:
        assert len(bands) == grid.rows  # one band per grid row: rows are released early


def test_stitcher_buffer_is_one_patch_high_whatever_the_height():
    short, tall = make_grid(300, 400, 128, 16), make_grid(3000, 400, 128, 16)
    assert Stitcher(short, 7).total.shape == Stitcher(tall, 7).total.shape == (7, 128, 400)


def test_blending_differs_from_naive_overwrite_and_has_no_seam():
    """Two side-by-side patches that disagree in their overlap: the left one says class 0 with
    margin 1, the right one class 1 with margin 0.5. Overwrite gives the whole overlap to the
    right patch, so the class boundary sits exactly on its left border (a seam); blending trusts
    each patch near its own centre, so the boundary lies inside the overlap, off every border."""
    p = 128
    grid = make_grid(p, 2 * p - 40, p, 40)  # two patches, 40-pixel overlap
    assert grid.cols == 2 and grid.xs[1] == p - 40
    logits = np.zeros((2, 2, p, p), np.float32)
    logits[0, 0] = 1.0
    logits[1, 1] = 0.5
    blended, _ = stitch(grid, logits, 2, 2)
    overwritten = naive_overwrite(grid, logits)
    assert (blended != overwritten).any()
    np.testing.assert_array_equal(blended, whole_image_blend(grid, logits))
    assert overwritten[0, grid.xs[1] - 1] == 0 and overwritten[0, grid.xs[1]] == 1  # seam on the border
    changes = np.flatnonzero(np.diff(blended[0].astype(int)))
    assert len(changes) == 1  # one clean boundary per row
    boundary = changes[0] + 1
    assert grid.xs[1] < boundary < p  # strictly inside the overlap, on neither patch's border
    assert (blended == blended[0]).all()  # identical rows: no horizontal seam either


def test_blended_logits_are_continuous_across_the_overlap():
    """A smooth field cut into overlapping patches with a per-patch offset: blending keeps the
    jump between neighbouring pixels small, overwrite shows the full offset at the border."""
    p = 128
    grid = make_grid(p, 2 * p - 48, p, 48)
    field = np.linspace(0, 1, grid.padded_width, dtype=np.float32)
    logits = np.zeros((2, 1, p, p), np.float32)
    for i, (_, x) in enumerate(grid.origins()):
        logits[i, 0] = field[x : x + p][None, :] + (0.5 if i else 0.0)
    weights = patch_weights(p)
    total = np.zeros((grid.padded_width,), np.float32)
    weight_sum = np.zeros((grid.padded_width,), np.float32)
    for (_, x), patch in zip(grid.origins(), logits):
        total[x : x + p] += patch[0, 0] * weights[p // 2]
        weight_sum[x : x + p] += weights[p // 2]
    blended = total / weight_sum
    step = np.abs(np.diff(blended)).max()
    assert step < 0.05  # the 0.5 offset is spread over the overlap
    overwrite = np.concatenate([logits[0, 0, 0, : grid.xs[1]], logits[1, 0, 0]])
    assert np.abs(np.diff(overwrite)).max() > 0.45


@pytest.mark.parametrize("size_in,size_out", [(127, 508), (32, 128), (5, 17), (1, 4)])
def test_upsample_matches_torch_bilinear_align_corners_false(size_in, size_out):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(size_in)
    logits = rng.normal(size=(2, 3, size_in, size_in)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(size_out, size_out), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(upsample_logits(logits, size_out), expected, atol=2e-6, rtol=1e-6)


def test_upsample_rows_are_convex_weights():
    matrix = upsample_matrix(127, 508)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    assert (matrix >= 0).all() and (np.count_nonzero(matrix, axis=1) <= 2).all()


def test_stitcher_refuses_more_patches_than_the_grid_has():
    grid = make_grid(100, 100, 128, 16)
    stitcher = Stitcher(grid, 3)
    stitcher.add(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="patches for a grid of 1"):
        stitcher.add(np.zeros((1, 3, 128, 128), np.float32))
