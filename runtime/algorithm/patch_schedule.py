"""What every scheduler shares (ONNX Runtime threads on the CPU, CUDA streams on a GPU): roles, grid, batches, row bands.

One image is cut into the patch grid of the bundle's geometry; its patches are processed in
row-major order in batches of consecutive indices (the last one may be smaller); finished mask rows
are handed out as row bands. Both schedulers take these from here, so they cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from runtime.algorithm.patch_grid import PatchGrid, make_grid
from runtime.bundle.manifest import Manifest

ROLES = ("global", "local", "fusion")  # the three graphs (engines) of a bundle, in the order they run
RowBand = tuple[int, np.ndarray]  # (first image row, uint8 class indices [rows, width])


def grid_for(manifest: Manifest, height: int, width: int) -> PatchGrid:
    """The patch grid of an image of ``height`` x ``width`` pixels, from the bundle's patch geometry."""
    return make_grid(height, width, manifest.patch.size, manifest.patch.min_overlap)


def batches(patches: int, batch_size: int) -> list[range]:
    """Consecutive patch indices in batches of ``batch_size`` (the last one holds the rest)."""
    return [range(start, min(start + batch_size, patches)) for start in range(0, patches, batch_size)]
