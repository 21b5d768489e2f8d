"""A memory budget turned into a batch size and a global band height: the quickest plan that fits.

The local and fusion graphs cost the same per batch whatever the image; the global graph is the
one part whose memory grows with the image, so it runs in horizontal bands (runtime.algorithm.global_features):
stage by stage when the bundle has stage graphs (small halos, cheap bands, so by default too, which
keeps memory flat in image height), else as its single graph with a large halo per band. Under a
budget every (batch, band) pair that fits is priced by a time model (work in patch units: patches,
a per-run overhead, the global branch's work times its halo recomputation) and the cheapest wins.
The byte estimates come from the backends (``memory_estimate``) and are estimates: the bench
measures the real peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from runtime.byte_sizes import format_bytes
from runtime.errors import InputError

DEFAULT_BATCH_SIZE = 6  # GLNet's 6 patches per batch; also the reference's default
MAX_BATCH_SIZE = 16
GLOBAL_ROW_ALIGN = 32  # band edges on the global graph's output stride
MIN_GLOBAL_BAND_ROWS = 128
# With no budget given, the global branch still runs in bands (halo included) of at most this many
# pixels, so the runtime's peak memory stops growing with image size: about 2550 x 2550, so that a
# 2448 x 2448 scene runs whole and anything larger runs in bands no larger than it.
DEFAULT_WHOLE_IMAGE_PIXELS = 6_000_000
# Stage-wise bands cost ~2% of the run's time (runtime.algorithm.global_features), so a bundle with stage graphs
# always bands its global branch, in bands of this many image rows: memory stays flat in image height.
DEFAULT_STAGED_BAND_ROWS = 512
# The time model, in units of one patch through the local and fusion graphs: a graph run costs this
# much besides its patches; the global branch costs this much per padded pixel (the default config's
# FLOPs: ResNet18 on the image vs ResNet50 + fusion per 508 px patch) unless the model says otherwise.
RUN_OVERHEAD_PATCHES = 0.1
DEFAULT_GLOBAL_PATCHES_PER_PIXEL = 1.0 / 600_000


@dataclass(frozen=True)
class MemoryPlan:
    """What the scheduler runs with, and the estimate that chose it."""

    batch_size: int
    global_band_rows: int | None  # None: the global graph sees the whole image at once
    estimate_bytes: int
    budget_bytes: int | None
    staged: bool = False  # the global branch runs stage by stage
    time_estimate: float | None = None  # relative (patch units), from MemoryModel.time_estimate

    def describe(self) -> str:
        bands = "whole image" if self.global_band_rows is None else f"bands of {self.global_band_rows} rows"
        how = " stage by stage" if self.staged else ""
        budget = "no budget" if self.budget_bytes is None else f"budget {format_bytes(self.budget_bytes)}"
        return f"batch {self.batch_size}, global branch{how} on {bands}, estimate {format_bytes(self.estimate_bytes)} ({budget})"


@dataclass(frozen=True)
class MemoryModel:
    """Estimated bytes of each part of a run, as functions of the choices the plan makes."""

    fixed_bytes: int  # weights, stitching band, image buffers
    batch_bytes: Callable[[int], int]  # local + fusion + upsampling for a batch of this size
    global_bytes: Callable[[int], int]  # the global graph on this many padded rows (input rows incl. halo)
    padded_height: int
    padded_width: int
    patches: int
    halo: int  # the single global graph's halo per band; unused when ``staged``
    staged: bool = False  # the global branch runs stage by stage; global_bytes/global_cost take band rows
    # relative work of the global branch for a band height (None: whole image), in patch units
    global_cost: Callable[[int | None], float] | None = None

    def band_input_rows(self, band_rows: int | None) -> int:
        """Rows the single global graph sees per band (halo included)."""
        return self.padded_height if band_rows is None else min(self.padded_height, band_rows + 2 * self.halo)

    def time_estimate(self, batch: int, band_rows: int | None) -> float:
        """Relative time of a plan, in patch units (see the module docstring)."""
        runs = -(-self.patches // batch)
        if self.global_cost is not None:
            global_work = self.global_cost(band_rows)
        else:
            whole = self.padded_height * self.padded_width * DEFAULT_GLOBAL_PATCHES_PER_PIXEL
            bands = 1 if band_rows is None else -(-self.padded_height // band_rows)
            global_work = whole * min(bands * self.band_input_rows(band_rows), bands * self.padded_height) / self.padded_height
        return self.patches + RUN_OVERHEAD_PATCHES * 2 * runs + global_work


def plan_memory(model: MemoryModel, budget_bytes: int | None = None, batch_size: int | None = None) -> MemoryPlan:
    """The plan with the least estimated time that fits ``budget_bytes`` (None: the defaults)."""
    largest_batch = max(1, min(MAX_BATCH_SIZE, model.patches))
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    whole_rows = model.padded_height
    if budget_bytes is None:
        batch = min(batch_size or DEFAULT_BATCH_SIZE, largest_batch)
        rows = None
        if model.staged:
            rows = DEFAULT_STAGED_BAND_ROWS if whole_rows > DEFAULT_STAGED_BAND_ROWS else None
        elif model.padded_height * model.padded_width > DEFAULT_WHOLE_IMAGE_PIXELS:
            rows = _align(max(MIN_GLOBAL_BAND_ROWS, DEFAULT_WHOLE_IMAGE_PIXELS // model.padded_width - 2 * model.halo))
            rows = None if rows >= whole_rows else rows
        return _plan(model, batch, rows, None)

    batches = [min(batch_size, largest_batch)] if batch_size else list(range(largest_batch, 0, -1))
    band_choices: list[int | None] = [None] + [
        r for r in range(_align(whole_rows) - GLOBAL_ROW_ALIGN, MIN_GLOBAL_BAND_ROWS - 1, -GLOBAL_ROW_ALIGN)
    ]
    fitting = [(batch, rows) for batch in batches for rows in band_choices if _total(model, batch, rows) <= budget_bytes]
    if fitting:
        # least time; among equals the larger batch and band (fewer, bigger runs)
        batch, rows = min(fitting, key=lambda c: (model.time_estimate(*c), -c[0], -(c[1] or whole_rows)))
        return _plan(model, batch, rows, budget_bytes)
    smallest = _total(model, batches[-1], MIN_GLOBAL_BAND_ROWS)
    raise InputError(
        f"a memory budget of {format_bytes(budget_bytes)} is too small for this bundle: even batch {batches[-1]} with "
        f"the global branch in {MIN_GLOBAL_BAND_ROWS}-row bands needs about {format_bytes(smallest)}; "
        "raise --max-memory or lower --batch-size"
    )


def lowest_budget(model: MemoryModel, batch_size: int | None = None) -> int:
    """The smallest budget any plan fits (estimated): a budget under it is refused."""
    batches = [batch_size] if batch_size else [1]
    return min(_total(model, b, rows) for b in batches for rows in (None, MIN_GLOBAL_BAND_ROWS))


def _plan(model: MemoryModel, batch: int, rows: int | None, budget: int | None) -> MemoryPlan:
    return MemoryPlan(batch, rows, _total(model, batch, rows), budget, model.staged, model.time_estimate(batch, rows))


def _align(rows: int) -> int:
    return max(GLOBAL_ROW_ALIGN, rows // GLOBAL_ROW_ALIGN * GLOBAL_ROW_ALIGN)


def _total(model: MemoryModel, batch: int, band_rows: int | None) -> int:
    rows = band_rows if model.staged else model.band_input_rows(band_rows)
    return model.fixed_bytes + model.batch_bytes(batch) + model.global_bytes(rows)


# ------------------------------------------------------------------------------------------ device memory
# The GPU schedule's plan: what must fit on the device is the schedule's buffers (a function of the
# batch, exact: runtime.algorithm.device_buffers), each engine's scratch memory (a function of the
# batch, from the engines) and the engines' weights. Free memory is what the driver reports
# (cudaMemGetInfo) before the buffers exist; a share of it is left for the CUDA context, the array
# library's temporaries (the stitching's upsampled batch) and fragmentation.
DEVICE_HEADROOM = 0.10  # of free device memory, never planned
AUTO_BATCH = "auto"


@dataclass(frozen=True)
class DevicePlan:
    """The batch the GPU schedule runs with, and the device bytes that chose it."""

    batch_size: int
    buffer_bytes: int  # the schedule's own buffers (exact)
    scratch_bytes: int  # engines' scratch memory (as the engines report it)
    limit_bytes: int  # what the plan had to fit: the budget, or free memory less the headroom
    free_bytes: int | None  # free device memory when planned (None: not asked)
    budget_bytes: int | None  # --max-device-memory

    @property
    def estimate_bytes(self) -> int:
        return self.buffer_bytes + self.scratch_bytes

    def describe(self) -> str:
        limit = "budget" if self.budget_bytes is not None else "free device memory"
        return (
            f"batch {self.batch_size}: buffers {format_bytes(self.buffer_bytes)} + engine scratch {format_bytes(self.scratch_bytes)} "
            f"within {format_bytes(self.limit_bytes)} ({limit})"
        )


def plan_device_batch(
    buffer_bytes: Callable[[int], int],
    scratch_bytes: Callable[[int], int] | int = 0,
    *,
    free_bytes: int | None = None,
    budget_bytes: int | None = None,
    batch_size: int | str | None = AUTO_BATCH,
    max_batch: int = 64,
    min_batch: int = 1,
    fixed_bytes: int = 0,
) -> DevicePlan:
    """The batch for the GPU schedule under ``--max-device-memory`` and what the device has free.

    ``batch_size``: a number (checked against the limit), or ``auto`` (the largest batch in
    ``min_batch..max_batch`` that fits; on a GPU with room, many more than the paper's 6).
    The limit is the budget when given, capped by free memory less DEVICE_HEADROOM when that is
    known; without a budget it is that share of free memory. ``fixed_bytes``: weights and anything
    else already resident that the budget must include. Raises InputError naming the bytes needed.
    """
    if budget_bytes is None and free_bytes is None:
        raise InputError("a device plan needs --max-device-memory or the device's free memory")
    usable = None if free_bytes is None else int(free_bytes * (1 - DEVICE_HEADROOM))
    if budget_bytes is not None:
        limit = budget_bytes - fixed_bytes if usable is None else min(budget_bytes - fixed_bytes, usable)
    else:
        assert usable is not None
        limit = usable

    def scratch(batch: int) -> int:
        return int(scratch_bytes(batch) if callable(scratch_bytes) else scratch_bytes)

    def needed(batch: int) -> int:
        return buffer_bytes(batch) + scratch(batch)

    def plan(batch: int) -> DevicePlan:
        return DevicePlan(batch, buffer_bytes(batch), scratch(batch), limit, free_bytes, budget_bytes)

    what = "--max-device-memory" if budget_bytes is not None and (usable is None or budget_bytes - fixed_bytes <= usable) else "free device memory"
    if batch_size is not None and batch_size != AUTO_BATCH:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"--batch-size must be a positive number or {AUTO_BATCH!r}, got {batch_size!r}")
        if needed(batch_size) > limit:
            raise InputError(
                f"batch {batch_size} needs about {format_bytes(needed(batch_size))} of device memory but {what} leaves "
                f"{format_bytes(max(limit, 0))}; lower --batch-size (or use --batch-size auto) or raise --max-device-memory"
            )
        return plan(batch_size)
    if needed(min_batch) > limit:
        raise InputError(
            f"{what} ({format_bytes(max(limit, 0))} usable) cannot hold even a batch of {min_batch} "
            f"({format_bytes(needed(min_batch))} needed); raise --max-device-memory or free device memory"
        )
    best = min_batch
    for batch in range(min_batch + 1, max_batch + 1):
        if needed(batch) > limit:
            break
        best = batch
    return plan(best)
