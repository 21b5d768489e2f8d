"""A memory budget turned into a batch size and, for images too large for it, a global band height.

The local and fusion graphs cost the same per batch whatever the image; the global graph is the
one part whose memory grows with the image, so when the whole image does not fit, the global
branch runs in horizontal bands (runtime.global_features). The estimates come from the backends
(``memory_estimate``) and are estimates: the bench measures the real peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from runtime.errors import InputError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}

DEFAULT_BATCH_SIZE = 6  # GLNet's 6 patches per batch; also the reference's default
MAX_BATCH_SIZE = 16
GLOBAL_ROW_ALIGN = 32  # band edges on the global graph's output stride
MIN_GLOBAL_BAND_ROWS = 128
# With no budget given, the global branch still runs in bands (halo included) of at most this many
# pixels, so the runtime's peak memory stops growing with image size: about 2550 x 2550, so that a
# 2448 x 2448 scene runs whole and anything larger runs in bands no larger than it.
DEFAULT_WHOLE_IMAGE_PIXELS = 6_000_000


def parse_memory_size(text: str | int | None) -> int | None:
    """'2GB', '1.5GiB', '512MB' or a byte count -> bytes (decimal units unless 'iB')."""
    if text is None:
        return None
    if isinstance(text, bool) or (isinstance(text, int) and text <= 0):
        raise InputError(f"memory size {text!r} must be a positive byte count")
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InputError(f"memory size {text!r} is not understood; write it like 2GB, 1.5GiB or 800MB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"memory size {text!r} must be positive")
    return value


def format_bytes(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f} GB"
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


@dataclass(frozen=True)
class MemoryPlan:
    """What the scheduler runs with, and the estimate that chose it."""

    batch_size: int
    global_band_rows: int | None  # None: the global graph sees the whole image at once
    estimate_bytes: int
    budget_bytes: int | None

    def describe(self) -> str:
        bands = "whole image" if self.global_band_rows is None else f"bands of {self.global_band_rows} rows"
        budget = "no budget" if self.budget_bytes is None else f"budget {format_bytes(self.budget_bytes)}"
        return f"batch {self.batch_size}, global branch on {bands}, estimate {format_bytes(self.estimate_bytes)} ({budget})"


@dataclass(frozen=True)
class MemoryModel:
    """Estimated bytes of each part of a run, as functions of the choices the plan makes."""

    fixed_bytes: int  # weights, stitching band, image buffers
    batch_bytes: Callable[[int], int]  # local + fusion + upsampling for a batch of this size
    global_bytes: Callable[[int], int]  # the global graph on this many padded rows (input rows incl. halo)
    padded_height: int
    padded_width: int
    patches: int
    halo: int


def plan_memory(model: MemoryModel, budget_bytes: int | None = None, batch_size: int | None = None) -> MemoryPlan:
    """Choose the batch size and the global band height that fit ``budget_bytes`` (None: defaults)."""
    largest_batch = max(1, min(MAX_BATCH_SIZE, model.patches))
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    whole_rows = model.padded_height
    if budget_bytes is None:
        batch = min(batch_size or DEFAULT_BATCH_SIZE, largest_batch)
        rows = None
        if model.padded_height * model.padded_width > DEFAULT_WHOLE_IMAGE_PIXELS:
            rows = _align(max(MIN_GLOBAL_BAND_ROWS, DEFAULT_WHOLE_IMAGE_PIXELS // model.padded_width - 2 * model.halo))
            rows = None if rows >= whole_rows else rows
        return MemoryPlan(batch, rows, _total(model, batch, rows), None)

    batches = [min(batch_size, largest_batch)] if batch_size else list(range(min(DEFAULT_BATCH_SIZE, largest_batch), 0, -1))
    band_choices: list[int | None] = [None] + [
        r for r in range(_align(whole_rows) - GLOBAL_ROW_ALIGN, MIN_GLOBAL_BAND_ROWS - 1, -GLOBAL_ROW_ALIGN)
    ]
    for batch in batches:
        for rows in band_choices:
            total = _total(model, batch, rows)
            if total <= budget_bytes:
                if rows is None and batch_size is None:
                    batch = _grow_batch(model, batch, budget_bytes, largest_batch)
                    total = _total(model, batch, rows)
                return MemoryPlan(batch, rows, total, budget_bytes)
    smallest = _total(model, batches[-1], MIN_GLOBAL_BAND_ROWS)
    raise InputError(
        f"a memory budget of {format_bytes(budget_bytes)} is too small for this bundle: even batch {batches[-1]} with "
        f"the global branch in {MIN_GLOBAL_BAND_ROWS}-row bands needs about {format_bytes(smallest)}; "
        "raise --max-memory or lower --batch-size"
    )


def _grow_batch(model: MemoryModel, batch: int, budget: int, largest: int) -> int:
    """Past the default batch, grow while the whole budget still holds (more patches per run)."""
    while batch < largest and _total(model, batch + 1, None) <= budget:
        batch += 1
    return batch


def _align(rows: int) -> int:
    return max(GLOBAL_ROW_ALIGN, rows // GLOBAL_ROW_ALIGN * GLOBAL_ROW_ALIGN)


def _total(model: MemoryModel, batch: int, band_rows: int | None) -> int:
    rows = model.padded_height if band_rows is None else min(model.padded_height, band_rows + 2 * model.halo)
    return model.fixed_bytes + model.batch_bytes(batch) + model.global_bytes(rows)
