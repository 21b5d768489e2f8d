"""The global branch on the whole image, or in horizontal bands with a halo when the image is too large.

The global graph is the one part whose memory grows with the image. Its output is small
(d x H/32 x W/32 floats), so for a tall image it runs on bands of rows whose edges sit on the
graph's 32-pixel stride, each read with a halo of context above and below; only each band's
interior feature rows are kept and the map is assembled from them. With a short halo, features
near a band edge differ from the whole-image ones, because the backbone's receptive field reaches
across the edge. With a halo of at least half the backbone's receptive field
(ResNet18: 435 px, ResNet50: 483 px) and band edges on the stride, every kept feature is computed
from exactly the pixels the whole-image run uses: the bench measured max |diff| 0 at halo 256 and
320, 0.2 at halo 128 and 3.3 at halo 0 (default config, 2448 x 2448, bands of 1024 rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from runtime.backends.base import Backend
from runtime.manifest import GLOBAL_INPUT, GLOBAL_OUTPUT

FEATURE_STRIDE = 32
DEFAULT_HALO = 256  # pixels of context above and below each band; a multiple of the stride


@dataclass(frozen=True)
class GlobalBand:
    """Interior rows [top, bottom) whose features a band provides, read as rows [read_top, read_bottom)."""

    top: int
    bottom: int
    read_top: int
    read_bottom: int


def plan_bands(padded_height: int, band_rows: int | None, halo: int = DEFAULT_HALO) -> list[GlobalBand]:
    """Bands covering [0, padded_height); None or a height >= the image gives one whole-image band."""
    if band_rows is None or band_rows >= padded_height:
        return [GlobalBand(0, padded_height, 0, padded_height)]
    if band_rows % FEATURE_STRIDE or halo % FEATURE_STRIDE:
        raise ValueError(f"band rows {band_rows} and halo {halo} must be multiples of {FEATURE_STRIDE}")
    bands = []
    for top in range(0, padded_height, band_rows):
        bottom = min(padded_height, top + band_rows)
        bands.append(GlobalBand(top, bottom, max(0, top - halo), min(padded_height, bottom + halo)))
    return bands


def global_features(
    backend: Backend,
    read_rows: Callable[[int, int], np.ndarray],
    padded_height: int,
    band_rows: int | None = None,
    halo: int = DEFAULT_HALO,
) -> np.ndarray:
    """[1, d, ceil(Hp/32), ceil(Wp/32)] global features; ``read_rows(top, bottom)`` gives normalised [C, rows, Wp]."""
    pieces = []
    for band in plan_bands(padded_height, band_rows, halo):
        image = read_rows(band.read_top, band.read_bottom)[None]
        features = backend.infer({GLOBAL_INPUT: image})[GLOBAL_OUTPUT]
        first = (band.top - band.read_top) // FEATURE_STRIDE
        count = math.ceil(band.bottom / FEATURE_STRIDE) - band.top // FEATURE_STRIDE
        pieces.append(features[:, :, first : first + count])
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=2)
