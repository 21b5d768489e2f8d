"""Blending of overlapping patch logits into one seam-free map.

Each patch's logits are weighted by a pyramid window that falls towards the patch's edges, and
the weighted sum is divided by the sum of weights. Pixels near a patch border, where the network
sees the least context, count the least, so no seam appears where patches meet.
"""

from __future__ import annotations

import functools

import numpy as np

from runtime.algorithm.patch_grid import PatchGrid

WEIGHT_FLOOR = 1e-3
FINALIZE_ROWS = 32  # rows blended and reduced at a time: 2.8 MB of working memory at 2448 px (padded to 2496), 7 classes


@functools.lru_cache(maxsize=8)
def patch_weights(patch_size: int) -> np.ndarray:
    """float32 [P, P] blending window: 1 in the middle, falling linearly to WEIGHT_FLOOR at the edges."""
    centre = (patch_size - 1) / 2.0
    ramp = 1.0 - np.abs(np.arange(patch_size, dtype=np.float64) - centre) / (centre + 1.0)
    ramp = np.clip(ramp, WEIGHT_FLOOR, 1.0)
    window = np.outer(ramp, ramp).astype(np.float32)
    window.setflags(write=False)
    return window


def upsample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out, in] matrix of 1-D bilinear resampling with torch's align_corners=False rule.

    Source coordinate of output i is (i + 0.5) * in/out - 0.5, clamped at 0; the upper neighbour is
    clamped to the last input. Applying it on both axes (R_y . L . R_x^T) equals
    ``F.interpolate(mode="bilinear", align_corners=False)`` without torch.
    """
    scale = in_size / out_size
    source = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = (source - lower).astype(np.float32)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=8)
def upsample_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, w0, w1) of 1-D bilinear resampling: out[i] = w0[i] * in[lower[i]] + w1[i] * in[upper[i]].

    The same source coordinates as ``upsample_matrix``; w1 = frac and w0 = 1 - frac in float32.
    """
    scale = in_size / out_size
    source = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = (source - lower).astype(np.float32)
    return lower, upper, np.float32(1.0) - frac, frac


def _resample(x: np.ndarray, taps: tuple, axis: int, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``out = w0 * x[lower] + w1 * x[upper]`` along ``axis`` (-1 or -2), in float32, into ``out``."""
    lower, upper, w0, w1 = taps
    if axis == -2:
        w0, w1 = w0[:, None], w1[:, None]
    # mode="clip": the taps always lie in range, and the default mode ("raise") copies ``out`` to a temporary first
    np.take(x, lower, axis=axis, out=out, mode="clip")
    out *= w0
    np.take(x, upper, axis=axis, out=scratch, mode="clip")
    scratch *= w1
    out += scratch
    return out


def upsample_logits(logits: np.ndarray, size: int) -> np.ndarray:
    """[B, K, h, w] logits -> [B, K, size, size] by separable bilinear resampling (align_corners=False).

    Two taps per output, first along the width, then along the height, each as float32
    ``w0 * a + w1 * b`` (two roundings for the products, one for the sum). This order is the
    runtime algorithm (docs/runtime-algorithm.md): a matrix product would leave the rounding to the
    BLAS kernel, which differs between machines, and another runtime could not match it bit for bit.
    """
    upsampler = PatchUpsampler(*logits.shape[1:], size)
    out = np.empty((*logits.shape[:2], size, size), dtype=np.float32)
    for patch, upsampled in zip(logits, out):
        upsampled[...] = upsampler(patch)
    return out


class PatchUpsampler:
    """``upsample_logits`` of one patch [K, h, w] at a time into buffers kept between patches.

    A batch at once made four arrays of the batch's full-resolution size per batch (43 MB each at
    batch 6, 7 classes, 508 px), each mapped and faulted in afresh: on the paper-size bundle that
    was 0.5 s of upsampling per 2448 x 2448 image alone, against 0.26 s patch by patch here.
    """

    def __init__(self, classes: int, height: int, width: int, size: int) -> None:
        self.width_taps = upsample_taps(width, size)
        self.height_taps = upsample_taps(height, size)
        self.wide = np.empty((classes, height, size), dtype=np.float32)
        self.wide_scratch = np.empty_like(self.wide)
        self.out = np.empty((classes, size, size), dtype=np.float32)
        self.scratch = np.empty_like(self.out)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """The [K, size, size] upsampled patch, in a buffer the next call overwrites."""
        wide = _resample(logits.astype(np.float32, copy=False), self.width_taps, -1, self.wide, self.wide_scratch)
        return _resample(wide, self.height_taps, -2, self.out, self.scratch)


class Stitcher:
    """Blends patch logits into a band buffer and hands out finished mask rows, top to bottom.

    Patches must arrive in the grid's row-major order. After the last patch of grid row r, rows
    above ``grid.final_row_after(r)`` can change no more: they are divided by their weight sum,
    reduced to class indices, cropped to the image and returned by ``add``. The buffer holds one
    patch height of rows (K x P x padded width floats), whatever the image height.
    """

    def __init__(self, grid: PatchGrid, num_classes: int) -> None:
        self.grid = grid
        self.num_classes = num_classes
        p = grid.patch_size
        self.band_rows = p  # rows are finalized after every grid row, so one patch height suffices
        self.total = np.zeros((num_classes, self.band_rows, grid.padded_width), dtype=np.float32)
        self.weight_sum = np.zeros((self.band_rows, grid.padded_width), dtype=np.float32)
        self.top = 0  # padded-image row held in buffer row 0
        self.next_index = 0  # next patch expected, row-major
        self.weights = patch_weights(p)
        self.origins = grid.origins()
        # finalize's working rows, a few at a time and kept between calls: classes last, so that argmax reads each
        # pixel's scores contiguously (along the first axis numpy copies the whole band to a temporary first)
        self.blended = np.empty((FINALIZE_ROWS, grid.padded_width, num_classes), dtype=np.float32)
        self.indices = np.empty((FINALIZE_ROWS, grid.padded_width), dtype=np.intp)

    def add(self, logits: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Blend a batch of patch logits (the next B patches); return finished rows.

        ``logits`` is [B, K, P, P], or [B, K, h, w] at the graph's output stride, upsampled here patch by
        patch (``PatchUpsampler``). Returns a list of (first image row, uint8 class indices [rows, width])
        in order; often empty.
        """
        p = self.grid.patch_size
        origins = self.origins
        if self.next_index + len(logits) > len(origins):
            raise ValueError(f"stitcher got {self.next_index + len(logits)} patches for a grid of {len(origins)}")
        upsampler = None if logits.shape[-2:] == (p, p) else PatchUpsampler(*logits.shape[1:], p)  # freed with the batch
        finished: list[tuple[int, np.ndarray]] = []
        for patch_logits in logits:
            index = self.next_index
            y, x = origins[index]
            if y + p - self.top > self.band_rows:
                raise ValueError(f"patch {index} at row {y} lies beyond the stitching band starting at {self.top}")
            rows = slice(y - self.top, y - self.top + p)
            if upsampler is not None:
                weighted = upsampler(patch_logits)
                weighted *= self.weights
            else:
                weighted = patch_logits * self.weights
            target = self.total[:, rows, x : x + p]
            target += weighted
            self.weight_sum[rows, x : x + p] += self.weights
            self.next_index += 1
            if self.next_index % self.grid.cols == 0:
                done = self.finalize(self.grid.final_row_after(self.grid.grid_row_of(index)))
                if done is not None:
                    finished.append(done)
        return finished

    def finalize(self, bottom: int) -> tuple[int, np.ndarray] | None:
        """Turn padded rows [top, bottom) into class indices, drop them from the band and shift it up."""
        bottom = min(bottom, self.grid.padded_height)
        count = bottom - self.top
        if count <= 0:
            return None
        top = self.top
        mask = np.empty((count, self.grid.padded_width), dtype=np.uint8)
        for first in range(0, count, FINALIZE_ROWS):
            rows = slice(first, min(first + FINALIZE_ROWS, count))
            n = rows.stop - first
            blended = self.blended[:n]
            np.divide(self.total[:, rows], self.weight_sum[None, rows], out=blended.transpose(2, 0, 1))
            mask[rows] = np.argmax(blended, axis=-1, out=self.indices[:n])
        keep = self.band_rows - count
        for plane in self.total:  # class by class: one overlapping assignment of all classes copies them to a temporary
            plane[:keep] = plane[count:]
            plane[keep:] = 0.0
        self.weight_sum[:keep] = self.weight_sum[count:]
        self.weight_sum[keep:] = 0.0
        self.top = bottom
        image_rows = max(0, min(bottom, self.grid.height) - top)
        if image_rows == 0:
            return None
        return top, mask[:image_rows, : self.grid.width]

    @property
    def done(self) -> bool:
        return self.next_index == len(self.grid)
