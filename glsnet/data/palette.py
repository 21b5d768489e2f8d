"""RGB-coded label masks <-> class indices, for palettes whose colours are made of 0s and 255s.

DeepGlobe and ISPRS masks are stored as RGB images whose channels should be 0 or 255, but
resampling and lossy saving leave values such as 120 or 130. Each channel is therefore
thresholded at 128 (>= 128 counts as 255) before the colour is looked up, so every pixel maps
to exactly one of the 8 corner colours of the RGB cube; a corner colour that is not in the
palette is an error, never silently mapped to a class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import InputError

THRESHOLD = 128
UNMAPPED = 255  # look-up value of a corner colour that is not in the palette

Palette = tuple[tuple[int, int, int], ...]


def _corner_code(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H, W] code 0..7 of the thresholded colour (r * 4 + g * 2 + b)."""
    on = rgb[..., :3] >= THRESHOLD
    return (on[..., 0].astype(np.uint8) << 2) | (on[..., 1].astype(np.uint8) << 1) | on[..., 2].astype(np.uint8)


def _code_table(palette: Palette) -> np.ndarray:
    table = np.full(8, UNMAPPED, dtype=np.uint8)
    for index, colour in enumerate(palette):
        if any(c not in (0, 255) for c in colour):
            raise InputError(f"palette colour {colour} of class {index} is not made of 0/255 channels")
        code = (colour[0] > 0) << 2 | (colour[1] > 0) << 1 | (colour[2] > 0)
        table[code] = index
    return table


def _code_colour(code: int) -> tuple[int, int, int]:
    return (255 * (code >> 2 & 1), 255 * (code >> 1 & 1), 255 * (code & 1))


def decode_mask(rgb: np.ndarray, palette: Palette, source: str | Path = "mask") -> np.ndarray:
    """RGB mask [H, W, 3] (uint8) -> uint8 class indices [H, W]; InputError naming ``source`` on a
    colour outside the palette (with the colour and its pixel count)."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise InputError(f"{source}: expected an RGB mask of shape [H, W, 3], got shape {rgb.shape}")
    code = _corner_code(rgb)
    labels = _code_table(palette)[code]
    if (labels == UNMAPPED).any():
        counts = np.bincount(code[labels == UNMAPPED].ravel(), minlength=8)
        bad = ", ".join(f"{_code_colour(int(c))} x {counts[c]} px" for c in np.flatnonzero(counts))
        raise InputError(
            f"{source}: mask colour(s) outside the palette after thresholding each channel at {THRESHOLD}: {bad}; "
            f"expected only {list(palette)}. Fix the mask, or train with the layout whose palette it uses."
        )
    return labels


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """uint8 class indices [H, W] -> RGB mask [H, W, 3]; indices outside the palette (ignore) become black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[np.asarray(labels, dtype=np.uint8)]
