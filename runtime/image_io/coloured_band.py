"""A band of finished mask rows that also carries its colour rows, made where the mask was (a GPU).

The writers take ``(top, mask)`` bands and colour them on the host with the bundle's palette. A GPU
pipeline that maps the palette on the device hands out a ColouredBand instead: it still unpacks as
``top, mask`` for every consumer that wants only the mask, and the writers take its ``color`` rows
as they are instead of colouring again.
"""

from __future__ import annotations

import numpy as np


class ColouredBand(tuple):
    """``(top, mask)`` with ``color``: uint8 [rows, width, 3] colours of ``mask`` [rows, width]."""

    color: np.ndarray

    def __new__(cls, top: int, mask: np.ndarray, color: np.ndarray) -> "ColouredBand":
        if color.shape != (*mask.shape, 3) or color.dtype != np.uint8:
            raise ValueError(f"colour rows {color.dtype} {color.shape} do not match mask rows {mask.shape} (uint8 [rows, width, 3])")
        band = super().__new__(cls, (top, mask))
        band.color = color
        return band
