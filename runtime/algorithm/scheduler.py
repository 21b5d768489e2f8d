"""Chaining the three graphs over one image: on the CPU one step at a time, on GPU providers overlapped.

The order of work matches glsnet.inference (the reference): pad bottom/right with zeros in
normalised space up to one patch; the global graph once per image (whole, or in bands when the
memory plan says so); per batch of patches in row-major order, the local graph, then the fusion
graph with the global features and the patch boxes; bilinear upsampling of the stride-4 logits;
pyramid-weighted blending; argmax. Threads stand in for CUDA streams: one runs the global graph,
one runs local batches into a bounded queue without waiting for it, and the caller's thread runs
fusion as soon as the global features exist, stitching and handing out finished rows. On the CPU
(``serialize_graphs``) the threads take turns to run a graph: each graph already uses every core,
and two working sets at once were the peak (measured: local batch + fusion, 1.46 GB on the default
bundle at 2448 x 2448). Cutting a batch's patches and stitching a batch take their turn too: on a
core that the next local batch's graph shared, they slowed that graph by more than their own time
(paper-size bundle, 2 cores, four alternated pairs: glsnet-cpp 15.8 -> 15.2 s per image). Each
batch's buffers are dropped as soon as the next step has what it needs, and freed heap is handed
back (runtime.process_memory.heap_release) after the global branch and each batch.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator

import numpy as np

from runtime.algorithm.global_features import (
    DEFAULT_HALO,
    FEATURE_STRIDE,
    GlobalStage,
    global_features,
    stage_band_rows,
    staged_global_features,
)
from runtime.algorithm.memory_budget import DEFAULT_GLOBAL_PATCHES_PER_PIXEL, MemoryModel, MemoryPlan, plan_memory
from runtime.algorithm.patch_grid import PatchGrid
from runtime.algorithm.patch_schedule import RowBand, batches, grid_for
from runtime.algorithm.stitching import Stitcher
from runtime.backends.base import Backend
from runtime.bundle.manifest import (
    FUSION_OUTPUT,
    GLOBAL_STAGE_INPUT,
    GLOBAL_STAGE_OUTPUT,
    LOCAL_INPUT,
    LOCAL_OUTPUTS,
    Manifest,
    Normalization,
)
from runtime.errors import InputError
from runtime.image_io.preprocess import normalize
from runtime.image_io.readers import ImageSource
from runtime.process_memory.heap_release import release_free_heap
from runtime.process_memory.rss_timeline import phase

if TYPE_CHECKING:
    from runtime.backends.onnxruntime_joined import JoinedOnnxRuntimeBackend

DEFAULT_QUEUE_DEPTH = 2  # local batches that may wait for the global features
# The interpreter, numpy and ONNX Runtime's libraries before any session: measured 35-60 MB.
PROCESS_BASE_BYTES = 60_000_000


@dataclass(frozen=True)
class ScheduleOptions:
    """How one image is scheduled; None means: let the memory plan decide."""

    batch_size: int | None = None
    max_memory: int | None = None  # bytes
    global_band_rows: int | None = None  # force banded global features (multiple of 32)
    global_halo: int = DEFAULT_HALO
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    # One graph at a time (the global, local and fusion graphs never run at once, nor beside cutting patches
    # or stitching): on the CPU every graph already uses every core, so overlap buys no speed, and it stacks
    # two working sets into the peak. Off for GPU providers, where the branches overlap on streams.
    serialize_graphs: bool = True
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

    def __init__(
        self,
        manifest: Manifest,
        global_backend: Backend,
        local_backend: Backend,
        fusion_backend: Backend,
        global_stages: tuple[GlobalStage, ...] = (),
        patch_backend: "JoinedOnnxRuntimeBackend | None" = None,
    ) -> None:
        self.manifest = manifest
        self.global_backend = global_backend
        self.local_backend = local_backend
        self.fusion_backend = fusion_backend
        self.global_stages = global_stages  # when given, the global branch runs stage by stage (exact, in bands)
        # when given, the local and fusion graphs joined in one session (runtime.backends.graph_join): it runs each
        # batch in place of the two, which the memory model still sizes (an upper bound for the joined session)
        self.patch_backend = patch_backend
        self._activation_lock = threading.Lock()

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
            # the fusion graph crops each patch's footprint out of the global map (separable matmuls): its working
            # set scales with the batch, the map itself is read in place (counted once)
            fusion_in = {**local_out, "boxes": (batch, 4)}
            fusion = _estimate(self.fusion_backend, fusion_in, {FUSION_OUTPUT: (batch, classes, fine, fine)}) + 4 * width * hg * wg
            queued = (options.queue_depth + 2) * batch * 4 * (width * tokens * tokens + skip * fine * fine)
            upsampled = 2 * batch * classes * p * p * 4
            working = max(local, fusion) if options.serialize_graphs else local + fusion
            return working + queued + upsampled

        def global_bytes(rows: int) -> int:
            out = (1, width, math.ceil(rows / FEATURE_STRIDE), wg)
            return _estimate(self.global_backend, {"image": (1, channels, rows, wp)}, {"global_features": out}) + 2 * 4 * width * hg * wg

        whole_global = () if self.global_stages else (self.global_backend,)
        weights = sum(_weight_bytes(b) for b in (*whole_global, self.local_backend, self.fusion_backend))
        weights += sum(_weight_bytes(stage.backend) for stage in self.global_stages)
        band_buffers = (classes + 1) * p * wp * 4 + 2 * channels * p * wp * 4
        staged = bool(self.global_stages)
        return MemoryModel(
            fixed_bytes=PROCESS_BASE_BYTES + weights + band_buffers + source_bytes,
            batch_bytes=batch_bytes,
            # serialized, the global working set never meets a batch's; the model still adds them (an upper bound)
            global_bytes=(lambda rows: self._staged_global_bytes(grid, rows)) if staged else global_bytes,
            padded_height=grid.padded_height,
            padded_width=wp,
            patches=len(grid),
            halo=options.global_halo,
            staged=staged,
            global_cost=(lambda rows: self._staged_global_cost(grid, rows)) if staged else None,
        )

    def _staged_global_bytes(self, grid: PatchGrid, band_rows: int | None) -> int:
        """Stage-wise global branch: the largest stage band's working memory plus every stage's held rows."""
        stages = self.global_stages
        bands = stage_band_rows(stages, band_rows or grid.padded_height)
        height, width = grid.padded_height, grid.padded_width
        working = held = 0
        for k, stage in enumerate(stages):
            c_in, c_out = _channels(stage.backend)
            s = stage.stride
            out_height, out_width = math.ceil(height / s), math.ceil(width / s)
            band_in = min(bands[k], out_height * s)
            rows_in = min(height, band_in + 2 * stage.halo)
            shapes_in = {GLOBAL_STAGE_INPUT: (1, c_in, rows_in, width)}
            shapes_out = {GLOBAL_STAGE_OUTPUT: (1, c_out, math.ceil(rows_in / s), out_width)}
            working = max(working, _estimate(stage.backend, shapes_in, shapes_out))
            # the last stage keeps one band while all_rows copies it into the features; the others keep what the next stage reads
            wanted = band_in // s if k + 1 == len(stages) else bands[k + 1] + 2 * stages[k + 1].halo + band_in // s
            held += 4 * c_out * out_width * min(out_height, wanted)
            height, width = out_height, out_width
        return working + held + 4 * c_out * height * width  # + the assembled features

    def _staged_global_cost(self, grid: PatchGrid, band_rows: int | None) -> float:
        """Work of the stage-wise global branch in patch units: the whole-image work times the rows
        recomputed in halos (stages weighted equally: ResNet stages are built to cost about the same)."""
        stages = self.global_stages
        bands = stage_band_rows(stages, band_rows or grid.padded_height)
        height, overheads = grid.padded_height, []
        for stage, band_in in zip(stages, bands):
            computed = 0
            for top in range(0, height, band_in):
                computed += min(height, top + band_in + stage.halo) - max(0, top - stage.halo)
            overheads.append(computed / height)
            height = math.ceil(height / stage.stride)
        return self._global_work(grid) * sum(overheads) / len(overheads)

    def _global_work(self, grid: PatchGrid) -> float:
        """The global branch on the whole padded image, in patch units (from the bundle's FLOPs when recorded)."""
        flops = self.manifest.provenance.get("flops") or {}
        try:
            per_pixel = flops["global"] / (flops["height"] * flops["width"])
            per_patch = (flops["local"] + flops["fusion"]) / flops["batch"]
            patches_per_pixel = per_pixel / per_patch
        except (KeyError, TypeError, ZeroDivisionError):
            patches_per_pixel = DEFAULT_GLOBAL_PATCHES_PER_PIXEL
        return grid.padded_height * grid.padded_width * patches_per_pixel

    def plan(self, grid: PatchGrid, options: ScheduleOptions, source_bytes: int = 0) -> MemoryPlan:
        plan = plan_memory(self.memory_model(grid, options, source_bytes), options.max_memory, options.batch_size)
        if options.global_band_rows is not None:
            rows = None if options.global_band_rows >= grid.padded_height else options.global_band_rows
            plan = MemoryPlan(plan.batch_size, rows, plan.estimate_bytes, plan.budget_bytes, plan.staged, plan.time_estimate)
        return plan

    def _feature_widths(self) -> tuple[int, int]:
        meta = self.local_backend.output_metadata() if self.patch_backend is None else self.patch_backend.joint_metadata()
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
            slot = threading.Lock() if options.serialize_graphs else contextlib.nullcontext()
            global_future: Future = executor.submit(self._global_features, reader, grid, plan, options, slot)
            executor.submit(self._produce_local, reader, batch_ranges, local_queue, stop, slot)
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
                del local, item  # the fusion graph holds what it needs; the queue slot is free again
                with slot:
                    with phase("fusion" if self.patch_backend is None else "local and fusion"):
                        logits = (self.patch_backend or self.fusion_backend).infer(feed)[FUSION_OUTPUT]
                    del feed
                    with phase("stitching"):
                        finished = stitcher.add(logits)  # upsampled patch by patch in the stitcher
                    del logits
                release_free_heap()  # the batch's activations are freed: give them back before the next
                yield from finished
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

    def _produce_local(
        self, reader: "PaddedReader", batches: list[range], out: queue.Queue, stop: threading.Event, slot: ContextManager
    ) -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                with slot:
                    patches = reader.patches(batch)
                    if self.patch_backend is None:
                        with phase("local batch"):
                            local = self.local_backend.infer({LOCAL_INPUT: patches})
                        item = {name: local[name] for name in LOCAL_OUTPUTS}
                    else:  # the joined graph runs the local branch with the fusion
                        item = {LOCAL_INPUT: patches}
                    del patches
                if not _put(out, (batch, item), stop):
                    return
            _put(out, None, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
            _put(out, _Failed(exc), stop)

    def _global_features(
        self, reader: "PaddedReader", grid: PatchGrid, plan: MemoryPlan, options: ScheduleOptions, slot: ContextManager
    ) -> np.ndarray:
        """The global branch, taking the graph slot for all its bands: fusion needs all of it before any batch."""
        with slot, phase("global"):
            if self.global_stages:
                features = staged_global_features(self.global_stages, reader.rows, grid.padded_height, plan.global_band_rows)
            else:
                with self._activation_lock:
                    self.global_backend.activate()  # not loaded up front when the bundle has stage graphs
                features = global_features(self.global_backend, reader.rows, grid.padded_height, plan.global_band_rows, options.global_halo)
            release_free_heap()
        return features

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
            normalize(self.source.read_rows(top, real), self.norm, out=out[:, : real - top, : self.source.width])
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


def _channels(backend: Backend) -> tuple[int, int]:
    """(input, output) channels of a one-input, one-output graph, from its metadata."""
    (meta_in,), (meta_out,) = backend.input_metadata().values(), backend.output_metadata().values()
    return int(meta_in.shape[1]), int(meta_out.shape[1])


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
