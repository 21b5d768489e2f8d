"""An image source's pixels into the stream scheduler's pinned staging, read band by band: what GPU pipelines share.

The pixels go up as read (uint8 for most images); normalisation happens on the device. The first
band of rows is read first to learn the pixel type and band count, so a wrong --bands is refused
before any device work.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import numpy as np

from runtime.algorithm.device_buffers import PixelLayout
from runtime.algorithm.patch_schedule import RowBand
from runtime.algorithm.stream_scheduler import StreamScheduler
from runtime.bundle.manifest import Normalization
from runtime.image_io.preprocess import check_bands

READ_ROWS = 512  # rows read at a time into the pinned pixel staging


class RowSource(Protocol):
    """What the GPU pipelines read images through (runtime.image_io.readers.ImageSource fits)."""

    height: int
    width: int

    def read_rows(self, top: int, bottom: int) -> np.ndarray: ...


def as_bands(rows: np.ndarray) -> np.ndarray:
    """Rows [r, W] of a one-band image as [r, W, 1]; [r, W, C] as they are."""
    return rows[:, :, None] if rows.ndim == 2 else rows


def iter_source_rows(
    scheduler_for: Callable[[int, int, PixelLayout, int], StreamScheduler],
    source: RowSource,
    norm: Normalization,
    progress: Callable[[int, int], None] | None = None,
    palette: np.ndarray | None = None,
) -> Iterator[RowBand]:
    """Mask rows of ``source`` from the scheduler ``scheduler_for(height, width, layout, colour_channels)`` returns,
    pixels uploaded as read (with ``palette``: ColouredBands, the colours mapped on the device). The scheduler is
    chosen once the pixel layout is known: a device plan sized for 3-band uint8 would undercount 16-bit or 4-band pixels."""
    height, width = source.height, source.width
    first = as_bands(source.read_rows(0, min(READ_ROWS, height)))
    check_bands(first.shape[2], norm)
    layout = PixelLayout(first.shape[2], first.dtype)
    scheduler = scheduler_for(height, width, layout, 0 if palette is None else 3)  # a palette is [classes, 3] (the scheduler checks)

    def write_pixels(target: np.ndarray) -> None:
        target[: first.shape[0]] = first
        for top in range(first.shape[0], height, READ_ROWS):
            bottom = min(top + READ_ROWS, height)
            target[top:bottom] = as_bands(source.read_rows(top, bottom))

    yield from scheduler.iter_pixel_rows(height, width, layout, write_pixels, norm, progress, palette)
