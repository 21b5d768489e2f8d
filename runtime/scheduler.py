"""Chaining the three graphs over one image on the CPU, with the global and local branches overlapped.

The order of work matches glsnet.inference (the reference): pad bottom/right with zeros in
normalised space up to one patch; the global graph once per image (whole, or in bands when the
memory plan says so); per batch of patches in row-major order, the local graph, then the fusion
graph with the global features and the patch boxes; bilinear upsampling of the stride-4 logits;
pyramid-weighted blending; argmax. Threads stand in for CUDA streams: one runs the global graph,
one runs local batches into a bounded queue without waiting for it, and the caller's thread runs
fusion as soon as the global features exist, stitching and handing out finished rows.
"""

from __future__ import annotations

import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from runtime.backends.base import Backend
from runtime.errors import InputError
from runtime.global_features import DEFAULT_HALO, FEATURE_STRIDE, global_features
from runtime.image_readers import ImageSource
from runtime.manifest import FUSION_OUTPUT, LOCAL_INPUT, LOCAL_OUTPUTS, Manifest, Normalization
from runtime.memory_budget import MemoryModel, MemoryPlan, plan_memory
from runtime.patch_grid import PatchGrid
from runtime.patch_schedule import RowBand, batches, grid_for
from runtime.preprocess import normalize
from runtime.stitching import Stitcher, upsample_logits

DEFAULT_QUEUE_DEPTH = 2  # local batches that may wait for the global features


@dataclass(frozen=True)
class ScheduleOptions:
    """How one image is scheduled; None means: let the memory plan decide."""

    batch_size: int | None = None
    max_memory: int | None = None  # bytes
    global_band_rows: int | None = None  # force banded global features (multiple of 32)
    global_halo: int = DEFAULT_HALO
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    bands: tuple[int, ...] | None = None  # input bands to feed, overriding the bundle's normalisation

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.global_band_rows is not None and (self.global_band_rows <= 0 or self.global_band_rows % FEATURE_STRIDE):
            raise InputError(f"global band rows must be a positive multiple of {FEATURE_STRIDE}, got {self.global_band_rows}")
        if self.global_halo < 0 or self.global_halo % FEATURE_STRIDE:
            raise InputError(f"global halo must be a non-negative multiple of {FEATURE_STRIDE}, got {self.global_halo}")
        if self.queue_depth < 1:
            raise InputError(f"queue depth must be >= 1, got {self.queue_depth}")


def normalization_for(manifest: Manifest, bands: tuple[int, ...] | None) -> Normalization:
    """The bundle's normalisation, reading ``bands`` of the input instead of its own when given."""
    norm = manifest.normalization
    if bands is None:
        return norm
    if len(bands) != len(norm.bands):
        raise InputError(
            f"--bands selects {len(bands)} band(s) {list(bands)} but the model reads {len(norm.bands)}; "
            f"name exactly {len(norm.bands)} (e.g. --bands {','.join(str(i) for i in range(len(norm.bands)))})"
        )
    if any(b < 0 for b in bands):
        raise InputError(f"--bands {list(bands)}: band indices start at 0")
    return Normalization(mean=norm.mean, std=norm.std, scale=norm.scale, bands=tuple(bands))


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Scheduler:
    """Runs the global, local and fusion backends over images; one Scheduler may serve many threads."""

    def __init__(self, manifest: Manifest, global_backend: Backend, local_backend: Backend, fusion_backend: Backend) -> None:
        self.manifest = manifest
        self.global_backend = global_backend
        self.local_backend = local_backend
        self.fusion_backend = fusion_backend

    # ------------------------------------------------------------------ planning
    def grid_for(self, height: int, width: int) -> PatchGrid:
        return grid_for(self.manifest, height, width)

    def memory_model(self, grid: PatchGrid, options: ScheduleOptions, source_bytes: int = 0) -> MemoryModel:
        """Byte estimates of each part of a run, from the backends' reported needs."""
        p, wp = grid.patch_size, grid.padded_width
        channels = len(self.manifest.normalization.bands)
        classes = self.manifest.num_classes
        width, skip = self._feature_widths()
        tokens, fine = math.ceil(p / FEATURE_STRIDE), math.ceil(p / self.manifest.patch.output_stride)
        hg, wg = math.ceil(grid.padded_height / FEATURE_STRIDE), math.ceil(wp / FEATURE_STRIDE)

        def batch_bytes(batch: int) -> int:
            local_out = {"local_features": (batch, width, tokens, tokens), "local_skip": (batch, skip, fine, fine)}
            local = _estimate(self.local_backend, {LOCAL_INPUT: (batch, channels, p, p)}, local_out)
            fusion_in = {**local_out, "global_features": (1, width, hg, wg), "boxes": (batch, 4)}
            fusion = _estimate(self.fusion_backend, fusion_in, {FUSION_OUTPUT: (batch, classes, fine, fine)})
            queued = (options.queue_depth + 2) * batch * 4 * (width * tokens * tokens + skip * fine * fine)
            upsampled = 2 * batch * classes * p * p * 4
            return local + fusion + queued + upsampled

        def global_bytes(rows: int) -> int:
            out = (1, width, math.ceil(rows / FEATURE_STRIDE), wg)
            return _estimate(self.global_backend, {"image": (1, channels, rows, wp)}, {"global_features": out}) + 2 * 4 * width * hg * wg

        weights = sum(_weight_bytes(b) for b in (self.global_backend, self.local_backend, self.fusion_backend))
        band_buffers = (classes + 1) * p * wp * 4 + 2 * channels * p * wp * 4
        return MemoryModel(
            fixed_bytes=weights + band_buffers + source_bytes,
            batch_bytes=batch_bytes,
            global_bytes=global_bytes,
            padded_height=grid.padded_height,
            padded_width=wp,
            patches=len(grid),
            halo=options.global_halo,
        )

    def plan(self, grid: PatchGrid, options: ScheduleOptions, source_bytes: int = 0) -> MemoryPlan:
        plan = plan_memory(self.memory_model(grid, options, source_bytes), options.max_memory, options.batch_size)
        if options.global_band_rows is not None:
            rows = None if options.global_band_rows >= grid.padded_height else options.global_band_rows
            plan = MemoryPlan(plan.batch_size, rows, plan.estimate_bytes, plan.budget_bytes)
        return plan

    def _feature_widths(self) -> tuple[int, int]:
        meta = self.local_backend.output_metadata()
        width, skip = meta[LOCAL_OUTPUTS[0]].shape[1], meta[LOCAL_OUTPUTS[1]].shape[1]
        config = self.manifest.model
        width = width if isinstance(width, int) else int(config.get("width", 256))
        skip = skip if isinstance(skip, int) else int(config.get("skip_width", 48))
        return width, skip

    # ------------------------------------------------------------------ running
    def iter_rows(
        self,
        source: ImageSource,
        options: ScheduleOptions = ScheduleOptions(),
        progress: Callable[[int, int], None] | None = None,
        plan: MemoryPlan | None = None,
    ) -> Iterator[RowBand]:
        """Segment ``source``; yield finished mask rows top to bottom as soon as no later patch touches them.

        ``progress(done, total)`` is called after each batch of patches.
        """
        norm = normalization_for(self.manifest, options.bands)
        if max(norm.bands) >= source.bands:
            raise InputError(
                f"{source.name}: the image has {source.bands} band(s) but the model reads bands {list(norm.bands)}; "
                f"choose {len(norm.bands)} bands that exist with --bands (e.g. --bands 0,1,2)"
            )
        grid = self.grid_for(source.height, source.width)
        plan = plan or self.plan(grid, options)
        reader = PaddedReader(source, norm, grid)
        stitcher = Stitcher(grid, self.manifest.num_classes)
        stop = threading.Event()
        local_queue: queue.Queue = queue.Queue(maxsize=options.queue_depth)
        batch_ranges = batches(len(grid), plan.batch_size)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="glsnet-branch")
        try:
            global_future: Future = executor.submit(
                global_features, self.global_backend, reader.rows, grid.padded_height, plan.global_band_rows, options.global_halo
            )
            executor.submit(self._produce_local, reader, batch_ranges, local_queue, stop)
            features = None
            done = 0
            while True:
                item = _get(local_queue, global_future)
                if item is None:
                    break
                if isinstance(item, _Failed):
                    raise item.exc
                batch, local = item
                if features is None:
                    features = global_future.result()
                feed = {**local, "global_features": features, "boxes": grid.boxes(list(batch))}
                logits = self.fusion_backend.infer(feed)[FUSION_OUTPUT]
                yield from stitcher.add(upsample_logits(logits, grid.patch_size))
                done += len(batch)
                if progress is not None:
                    progress(done, len(grid))
            if not stitcher.done:
                raise RuntimeError(f"scheduler stitched {stitcher.next_index} of {len(grid)} patches")
        finally:
            stop.set()
            _drain(local_queue)
            executor.shutdown(wait=True, cancel_futures=True)
            _drain(local_queue)

    def _produce_local(self, reader: "PaddedReader", batches: list[range], out: queue.Queue, stop: threading.Event) -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                patches = reader.patches(batch)
                local = self.local_backend.infer({LOCAL_INPUT: patches})
                if not _put(out, (batch, {name: local[name] for name in LOCAL_OUTPUTS}), stop):
                    return
            _put(out, None, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
            _put(out, _Failed(exc), stop)

    def segment(self, source: ImageSource, options: ScheduleOptions = ScheduleOptions()) -> np.ndarray:
        """The whole uint8 class mask [H, W] of ``source``."""
        mask = np.empty((source.height, source.width), dtype=np.uint8)
        for top, rows in self.iter_rows(source, options):
            mask[top : top + len(rows)] = rows
        return mask


class PaddedReader:
    """Normalised rows of the zero-padded image; keeps the strips of the last grid rows for patch cutting."""

    def __init__(self, source: ImageSource, norm: Normalization, grid: PatchGrid) -> None:
        self.source, self.norm, self.grid = source, norm, grid
        self.origins = grid.origins()
        self._strips: dict[int, np.ndarray] = {}

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """float32 [C, bottom - top, padded width]; rows and columns beyond the image are zeros."""
        out = np.zeros((len(self.norm.bands), bottom - top, self.grid.padded_width), dtype=np.float32)
        real = min(bottom, self.source.height)
        if real > top:
            out[:, : real - top, : self.source.width] = normalize(self.source.read_rows(top, real), self.norm)
        return out

    def patches(self, batch: range) -> np.ndarray:
        p = self.grid.patch_size
        origins = self.origins
        wanted = {self.grid.grid_row_of(i) for i in batch}
        self._strips = {r: s for r, s in self._strips.items() if r in wanted}
        for r in wanted - set(self._strips):
            self._strips[r] = self.rows(self.grid.ys[r], self.grid.ys[r] + p)
        return np.stack([self._strips[self.grid.grid_row_of(i)][:, :, origins[i][1] : origins[i][1] + p] for i in batch])


def _estimate(backend: Backend, inputs: dict, outputs: dict) -> int:
    estimate = getattr(backend, "memory_estimate", None)
    if estimate is None:  # a backend that reports nothing: count its tensors once
        return sum(math.prod(s) * 4 for s in (*inputs.values(), *outputs.values()))
    return int(estimate(inputs, outputs))


def _weight_bytes(backend: Backend) -> int:
    return int(getattr(backend, "weight_bytes", 0))


def _put(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(source: queue.Queue, global_future: Future) -> object:
    """Next local batch; a failure of the global branch surfaces here even while the queue is empty."""
    while True:
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            if global_future.done() and global_future.exception() is not None:
                raise global_future.exception()  # type: ignore[misc]


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
