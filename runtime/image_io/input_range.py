"""Bringing an image's pixel values to the type and range the bundle was trained on, or refusing it.

A model trained on 8-bit images divides every pixel by 255; a 16-bit GeoTIFF (11 or 12 significant
bits) or a float reflectance product divided the same way gives a mask that is silently wrong.
So an image whose pixel type differs from the manifest's ``input_pixels`` is refused unless the
user says how its values map onto the trained range (``--input-range``):

- ``MIN,MAX``: one linear range for every band, e.g. ``0,4095`` for 12-bit data;
- ``MIN,MAX/MIN,MAX/...``: one range per image band;
- ``pLOW,pHIGH``: a percentile stretch per band, e.g. ``p2,p98``, measured on rows sampled
  evenly through the image (at most ``PERCENTILE_SAMPLE_ROWS`` rows are read for it).

Values are mapped linearly onto ``[low, high]`` of the manifest, clipped there, and NaN becomes
``low``; the mapped pixels are float32 and go through the model's own normalisation as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.bundle.manifest import InputPixels, Normalization
from runtime.errors import InputError
from runtime.image_io.preprocess import check_bands
from runtime.image_io.readers import ImageSource

PERCENTILE_SAMPLE_ROWS = 64
OPTION = "--input-range"
EXAMPLES = f"{OPTION} 0,4095 (12-bit data), {OPTION} 0,65535/0,65535/0,65535 (one range per band) or {OPTION} p2,p98 (a percentile stretch)"


@dataclass(frozen=True)
class InputRange:
    """How to map an image's values onto the trained range: fixed (low, high) pairs, or percentiles."""

    bounds: tuple[tuple[float, float], ...] = ()  # one pair for every band, or one per band
    percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if bool(self.bounds) == (self.percentiles is not None):
            raise InputError(f"{OPTION}: give either value ranges or percentiles, e.g. {EXAMPLES}")
        for low, high in self.bounds:
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise InputError(f"{OPTION}: range {low:g},{high:g} needs finite MIN < MAX")
        if self.percentiles is not None:
            low, high = self.percentiles
            if not 0.0 <= low < high <= 100.0:
                raise InputError(f"{OPTION}: percentiles p{low:g},p{high:g} need 0 <= low < high <= 100")

    def describe(self) -> str:
        if self.percentiles is not None:
            return "p{:g},p{:g}".format(*self.percentiles)
        return "/".join(f"{low:g},{high:g}" for low, high in self.bounds)


def parse_input_range(text: str | None) -> InputRange | None:
    """'0,4095' / '0,4095/0,4095/0,2047' / 'p2,p98' -> InputRange (None for no option)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if text.lower().startswith("p"):
            low, high = (float(part.strip().lower().removeprefix("p")) for part in text.split(","))
            return InputRange(percentiles=(low, high))
        bounds = []
        for group in text.split("/"):
            low, high = (float(part) for part in group.split(","))
            bounds.append((low, high))
        return InputRange(bounds=tuple(bounds))
    except ValueError:
        raise InputError(f"{OPTION} {text!r}: expected MIN,MAX, MIN,MAX/MIN,MAX/... or pLOW,pHIGH; e.g. {EXAMPLES}") from None


class RangedSource:
    """An ImageSource whose rows are mapped linearly from per-band [low, high] onto the trained range."""

    def __init__(self, source: ImageSource, lows: np.ndarray, highs: np.ndarray, target: InputPixels) -> None:
        self._source = source
        self.name, self.height, self.width, self.bands = source.name, source.height, source.width, source.bands
        self.geotags = source.geotags
        self.lows, self.highs = lows.astype(np.float64), highs.astype(np.float64)
        span = target.high - target.low
        self._gain = (span / (self.highs - self.lows)).astype(np.float32)
        self._offset = (target.low - self.lows * (span / (self.highs - self.lows))).astype(np.float32)
        self._target = target

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        rows = self._source.read_rows(top, bottom).astype(np.float32)
        mapped = rows * self._gain + self._offset
        np.clip(mapped, self._target.low, self._target.high, out=mapped)
        return np.nan_to_num(mapped, nan=self._target.low, copy=False)

    def close(self) -> None:
        self._source.close()


def source_dtype(source: ImageSource) -> np.dtype:
    """The pixel type of a source (read from one row when the source does not say)."""
    dtype = getattr(source, "dtype", None)
    if dtype is None:
        array = getattr(source, "array", None)
        dtype = array.dtype if array is not None else source.read_rows(0, 1).dtype
    return np.dtype(dtype)


def conform_source(
    source: ImageSource, target: InputPixels, norm: Normalization, input_range: InputRange | None = None
) -> ImageSource:
    """``source`` as the model expects it: its bands present, its values in the trained type's range.

    A source of the trained pixel type is returned unchanged unless an ``input_range`` is given;
    one of another type without an ``input_range`` is refused with a message naming the options.
    """
    check_bands(source.bands, norm, source.name)
    dtype = source_dtype(source)
    if input_range is None:
        if dtype == np.dtype(target.dtype):
            return source
        raise InputError(
            f"{source.name}: pixel type {dtype} but the bundle's model was trained on {target.dtype} pixels in "
            f"[{target.low:g}, {target.high:g}]; say how this image's values map onto that range with {EXAMPLES}"
        )
    if input_range.percentiles is not None:
        lows, highs = percentile_bounds(source, input_range.percentiles)
    else:
        bounds = input_range.bounds
        if len(bounds) == 1:
            bounds = bounds * source.bands
        if len(bounds) != source.bands:
            raise InputError(
                f"{source.name}: {OPTION} {input_range.describe()} gives {len(bounds)} ranges but the image has "
                f"{source.bands} band(s); give one MIN,MAX for all bands or one per band"
            )
        lows, highs = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    return RangedSource(source, lows, highs, target)


def percentile_bounds(source: ImageSource, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) percentiles of rows sampled evenly through the image (NaN ignored)."""
    rows = np.unique(np.linspace(0, source.height - 1, min(source.height, PERCENTILE_SAMPLE_ROWS)).astype(int))
    sample = np.concatenate([source.read_rows(int(r), int(r) + 1) for r in rows]).reshape(-1, source.bands).astype(np.float64)
    sample[~np.isfinite(sample)] = np.nan
    if np.isnan(sample).all(axis=0).any():
        raise InputError(f"{source.name}: a band holds no finite value in the sampled rows; {OPTION} p.. cannot stretch it")
    lows, highs = np.nanpercentile(sample, percentiles, axis=0)
    highs = np.where(highs > lows, highs, lows + 1.0)  # a constant band maps onto the low end
    return lows, highs
