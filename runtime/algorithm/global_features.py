"""The global branch on the whole image, in horizontal bands with a halo, or stage by stage in bands.

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
from runtime.bundle.manifest import GLOBAL_INPUT, GLOBAL_OUTPUT, GLOBAL_STAGE_INPUT, GLOBAL_STAGE_OUTPUT

FEATURE_STRIDE = 32
DEFAULT_HALO = 256  # pixels of context above and below each band; a multiple of the stride
# A stage's band is at least this many times its halo (in its input rows), so recomputed halo rows
# cost at most 2/8 = 25% of that stage.
MIN_BAND_OVER_HALO = 8
# ... and, where that stays within half the image band's row count, at least this many times: a later
# stage's input row holds no more floats than the first stage's widest activation per image row (ResNet:
# 16 x the image width each), so its band and the rows held for it stay within the first stage's while halos
# cost at most 2/32 of it. At 128-row bands (the memory planner's smallest) this gives the narrow bands.
# Measured on the paper-size global branch at 2448 x 2448, bands of 512 image rows: stage bands of 512, 128,
# 64, 64 input rows ran at 0.69 of the sgemm rate, 512, 256, 256, 256 at 0.80 (the whole image: 0.89).
WIDE_BAND_OVER_HALO = 32


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


@dataclass(frozen=True)
class GlobalStage:
    """One stage graph of the global branch: ``stride`` rows in per row out, ``halo`` input rows of context."""

    backend: Backend
    stride: int
    halo: int


def stage_band_rows(stages: list[GlobalStage] | tuple[GlobalStage, ...], band_rows: int) -> list[int]:
    """Each stage's band height in its own input rows, for bands of about ``band_rows`` image rows."""
    out, stride = [], 1
    for stage in stages:
        wide = min(WIDE_BAND_OVER_HALO * stage.halo, band_rows // 2)
        rows = max(band_rows // stride, wide, MIN_BAND_OVER_HALO * stage.halo, stage.stride)
        out.append(-(-rows // stage.stride) * stage.stride)
        stride *= stage.stride
    return out


class _StageRows:
    """Output rows of one stage, computed band by band on demand, each dropped once no later band needs it."""

    def __init__(self, stage: GlobalStage, read_input: Callable[[int, int], np.ndarray], in_height: int, band_in: int) -> None:
        self.stage, self.read_input, self.in_height = stage, read_input, in_height
        self.height = math.ceil(in_height / stage.stride)
        self.band_out = band_in // stage.stride
        self.computed = 0
        self.chunks: list[tuple[int, np.ndarray]] = []  # (first row, [C, rows, W]) in row order

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """[C, bottom - top, W] of this stage's output; rows before ``top`` are released."""
        while self.computed < bottom:
            self._compute_next()
        self.chunks = [(start, chunk) for start, chunk in self.chunks if start + chunk.shape[1] > top]
        parts = [chunk[:, max(0, top - start) : bottom - start] for start, chunk in self.chunks if start < bottom]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def all_rows(self) -> np.ndarray:
        """[C, height, W]: each band is copied in as soon as it is computed and then released, so the whole
        output (the largest thing the global branch keeps) is never held twice."""
        out = None
        while self.computed < self.height:
            start = self.computed
            self._compute_next()
            _, chunk = self.chunks.pop()
            if out is None:
                out = np.empty((chunk.shape[0], self.height, chunk.shape[2]), dtype=chunk.dtype)
            out[:, start : start + chunk.shape[1]] = chunk
        assert out is not None, "all_rows is called once, before any band is computed"
        return out

    def _compute_next(self) -> None:
        s, halo = self.stage.stride, self.stage.halo
        first_out = self.computed
        last_out = min(self.height, first_out + self.band_out)
        top, bottom = first_out * s, min(self.in_height, last_out * s)
        read_top, read_bottom = max(0, top - halo), min(self.in_height, bottom + halo)
        out = self.stage.backend.infer({GLOBAL_STAGE_INPUT: np.ascontiguousarray(self.read_input(read_top, read_bottom))[None]})
        features = out[GLOBAL_STAGE_OUTPUT][0]
        skip = (top - read_top) // s
        if features.shape[1] < skip + last_out - first_out:
            raise RuntimeError(f"global stage gave {features.shape[1]} rows for input rows {read_top}..{read_bottom}; expected ceil(rows / {s})")
        self.chunks.append((first_out, features[:, skip : skip + last_out - first_out].copy()))
        self.computed = last_out


def staged_global_features(
    stages: list[GlobalStage] | tuple[GlobalStage, ...],
    read_rows: Callable[[int, int], np.ndarray],
    padded_height: int,
    band_rows: int | None = None,
) -> np.ndarray:
    """[1, d, ceil(Hp/32), ceil(Wp/32)] global features, exactly as the single global graph gives them.

    ``band_rows`` (image rows; None: whole image) sets each stage's band (``stage_band_rows``).
    """
    bands = stage_band_rows(stages, band_rows if band_rows is not None else padded_height)
    reader, height = read_rows, padded_height
    stream = None
    for stage, band_in in zip(stages, bands):
        stream = _StageRows(stage, reader, height, min(band_in, -(-height // stage.stride) * stage.stride))
        reader, height = stream.rows, stream.height
    assert stream is not None, "a staged global branch has at least one stage"
    return stream.all_rows()[None]
