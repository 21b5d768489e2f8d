"""Percentile ranges from |x| histograms updated per feed: ONNX Runtime's percentile calibration, fast.

ONNX Runtime's HistogramCollector spent most of an INT8 build (paper-size local branch: 7.9 s per
batch of 8 patches against 0.95 s for the plain inference): per feed it copies every activation three
times (asarray, flatten, abs), and from the second feed on it passes explicit bin edges to
np.histogram, which then sorts every value. This collector keeps its method (|x| binned at the width
chosen on the first feed, more bins when a later feed reaches further, the threshold is the edge where
the cumulative count passes the percentile, clamped to the values' own min and max) and plugs into
its calibrator through the CalibrationDataCollector interface, but bins every value with one multiply
and a bincount, 64 Ki values at a time so the scratch stays in cache: on three paper-size local
batches its ranges were within 6.4e-5 (relative) of ONNX Runtime's. Nothing but the histograms
outlives a feed.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from runtime.optional_import import require


@dataclass
class _Histogram:
    counts: np.ndarray  # int64 counts of |x| in bins [k * width, (k + 1) * width)
    width: float
    low: float  # smallest value seen (signed)
    high: float  # largest value seen (signed)


CHUNK = 1 << 16  # values binned at a time: the scratch stays in cache (3.6 ns per value against 17 for whole arrays)


def _chunks(values: np.ndarray):
    flat = values.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        yield flat[start : start + CHUNK]


def _bin(values: np.ndarray, inverse_width: np.float32, scratch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Counts of |values| in bins of 1 / inverse_width, as long as the largest index needs."""
    magnitude, index = scratch
    np.abs(values, out=magnitude)
    np.multiply(magnitude, inverse_width, out=magnitude)
    index[...] = magnitude
    return np.bincount(index)


class PercentileCollector:
    """ONNX Runtime's CalibrationDataCollector interface (collect, compute_collection_result), symmetric percentile;
    set as the ``collector`` of the calibrator ``create_calibrator(..., CalibrationMethod.Percentile)`` returns."""

    def __init__(
        self, percentile: float = 99.99, num_bins: int = 2048, observe: Callable[[int, dict[str, np.ndarray]], None] | None = None
    ) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile {percentile}: choose a value in (0, 100]")
        if num_bins < 2:
            raise ValueError(f"num_bins {num_bins}: need at least 2")
        self.percentile = percentile
        self.num_bins = num_bins
        self.histograms: dict[str, _Histogram | None] = {}
        self.threads = os.cpu_count() or 1
        self.observe = observe  # observe(feed index, tensors) sees each feed's arrays before they are binned
        self.feeds = 0
        self._scratch = threading.local()  # each thread's chunk buffers

    def collect(self, name_to_arr: dict) -> None:
        """Each tensor's arrays in order; tensors spread over threads (numpy releases the GIL while it bins: 1.4x on 2 cores)."""

        def add_all(item) -> None:
            name, arrays = item
            for values in arrays if isinstance(arrays, list) else [arrays]:
                self._add(name, np.asarray(values))

        if self.observe is not None:
            self.observe(self.feeds, {name: arrays[-1] if isinstance(arrays, list) else arrays for name, arrays in name_to_arr.items()})
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(add_all, name_to_arr.items()))
        self.feeds += 1

    def _add(self, name: str, values: np.ndarray) -> None:
        if values.size == 0:
            self.histograms.setdefault(name, None)
            return
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"calibration: tensor {name!r} holds NaN or infinite values; its range cannot be measured")
        seen = self.histograms.get(name)
        if seen is None:
            amax = max(-low, high)
            if amax == 0.0:
                self.histograms[name] = None
                return
            seen = self.histograms[name] = _Histogram(np.zeros(self.num_bins, np.int64), amax / self.num_bins, low, high)
        counts = seen.counts
        for part in _chunks(values):
            found = _bin(part, np.float32(1.0 / seen.width), self._buffers(len(part)))
            if len(found) > len(counts):
                counts = np.concatenate([counts, np.zeros(len(found) - len(counts), np.int64)])
            counts[: len(found)] += found
        seen.counts, seen.low, seen.high = counts, min(seen.low, low), max(seen.high, high)

    def _buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        scratch = getattr(self._scratch, "buffers", None)
        if scratch is None:
            scratch = self._scratch.buffers = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.intp))
        return scratch[0][:size], scratch[1][:size]

    def compute_collection_result(self) -> dict:
        """tensor -> TensorData(lowest, highest): -t and t clamped to the values' min and max."""
        calibrate = require("onnxruntime.quantization.calibrate", "INT8 calibration")
        result = {}
        for name, seen in self.histograms.items():
            if seen is None:
                lowest = highest = 0.0
            else:
                cdf = np.cumsum(seen.counts) / seen.counts.sum()
                threshold = float(np.searchsorted(cdf, self.percentile / 100.0)) * seen.width
                lowest, highest = max(-threshold, seen.low), min(threshold, seen.high)
            result[name] = calibrate.TensorData(lowest=np.array(lowest, np.float32), highest=np.array(highest, np.float32))
        return result
