"""Patch geometry shared by training, export checks and the runtime (GLNet's rule).

Patches of ``patch_size`` overlap by at least ``min_overlap`` pixels; the stride is the largest
integer that keeps that overlap, and the last patch is clamped to the border. An image smaller
than a patch is padded at the bottom/right up to one patch, and the padding is recorded so that
it can be cropped away again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from runtime.errors import InputError

DEFAULT_PATCH_SIZE = 508
DEFAULT_MIN_OVERLAP = 50


def axis_starts(length: int, patch_size: int, min_overlap: int) -> tuple[tuple[int, ...], int]:
    """Start offsets of the patches along one axis of ``length`` pixels, and the stride used.

    ``length`` is the padded length (>= patch_size).
    """
    if length <= patch_size:
        return (0,), 0
    step_max = patch_size - min_overlap
    count = math.ceil((length - patch_size) / step_max) + 1
    stride = math.ceil((length - patch_size) / (count - 1))
    starts = tuple(min(i * stride, length - patch_size) for i in range(count))
    return starts, stride


@dataclass(frozen=True)
class PatchGrid:
    """Where every patch of one image lies; patches are ordered row-major (y, then x)."""

    height: int
    width: int
    patch_size: int
    min_overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    stride_y: int
    stride_x: int

    @property
    def padded_height(self) -> int:
        return max(self.height, self.patch_size)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.patch_size)

    @property
    def padding(self) -> tuple[int, int]:
        """(bottom, right) pixels of padding added so that one patch fits."""
        return self.padded_height - self.height, self.padded_width - self.width

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    def __len__(self) -> int:
        return self.rows * self.cols

    def origins(self) -> list[tuple[int, int]]:
        """(y, x) top-left corner of each patch, row-major."""
        return [(y, x) for y in self.ys for x in self.xs]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.origins())

    def boxes(self, indices: list[int] | np.ndarray | None = None) -> np.ndarray:
        """Patch footprints as float32 [N, 4] boxes (x1, y1, x2, y2) in padded-image pixels."""
        origins = self.origins()
        if indices is not None:
            origins = [origins[int(i)] for i in indices]
        p = self.patch_size
        return np.array([(x, y, x + p, y + p) for y, x in origins], dtype=np.float32).reshape(-1, 4)

    def grid_row_of(self, index: int) -> int:
        return index // self.cols

    def final_row_after(self, grid_row: int) -> int:
        """Image rows above the returned one are touched by no patch after grid row ``grid_row``."""
        if grid_row + 1 < self.rows:
            return self.ys[grid_row + 1]
        return self.padded_height


def make_grid(
    height: int,
    width: int,
    patch_size: int = DEFAULT_PATCH_SIZE,
    min_overlap: int = DEFAULT_MIN_OVERLAP,
) -> PatchGrid:
    """The patch grid for an image of ``height`` x ``width`` pixels."""
    if height <= 0 or width <= 0:
        raise InputError(f"image size must be positive, got {height} x {width}")
    if patch_size <= 0 or not 0 <= min_overlap < patch_size:
        raise InputError(
            f"patch size {patch_size} with minimum overlap {min_overlap} is not a valid geometry: "
            "need patch_size > 0 and 0 <= min_overlap < patch_size"
        )
    ys, sy = axis_starts(max(height, patch_size), patch_size, min_overlap)
    xs, sx = axis_starts(max(width, patch_size), patch_size, min_overlap)
    return PatchGrid(height, width, patch_size, min_overlap, ys, xs, sy, sx)
