"""Blending of overlapping patch logits into one seam-free map.

Each patch's logits are weighted by a pyramid window that falls towards the patch's edges, and
the weighted sum is divided by the sum of weights. Pixels near a patch border, where the network
sees the least context, count the least, so no seam appears where patches meet.
"""

from __future__ import annotations

import functools

import numpy as np

WEIGHT_FLOOR = 1e-3


@functools.lru_cache(maxsize=8)
def patch_weights(patch_size: int) -> np.ndarray:
    """float32 [P, P] blending window: 1 in the middle, falling linearly to WEIGHT_FLOOR at the edges."""
    centre = (patch_size - 1) / 2.0
    ramp = 1.0 - np.abs(np.arange(patch_size, dtype=np.float64) - centre) / (centre + 1.0)
    ramp = np.clip(ramp, WEIGHT_FLOOR, 1.0)
    window = np.outer(ramp, ramp).astype(np.float32)
    window.setflags(write=False)
    return window
