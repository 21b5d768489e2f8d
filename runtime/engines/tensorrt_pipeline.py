"""A bundle's three TensorRT engines and the stream scheduler, opened together: what ``glsnet run`` uses on a GPU.

Opening checks the engines against this machine (engine_check), verifies their checksums, and wires
context memory: each engine has its own scratch allocation, reserved at open for its profile's
need, because the three run concurrently on their own streams (global, local, fusion; local on
the DLA where the engine was built for it). A DLA engine is deserialised by a runtime whose DLA
core is set first. Images go up as their pixels (uint8 for most) and are normalised on the device;
mask rows come down (runtime.algorithm.stream_scheduler).

It offers the pipeline interface (runtime.engines.pipeline: open, plan, iter_rows, close). It opens once (a
second ``open`` warns and does nothing) and lazily on first use. One device, one pair of streams and
one set of staging buffers serve every image, so images are segmented one at a time: a lock makes
concurrent callers wait their turn (the Segmenter is shared between threads).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from runtime.algorithm.device_buffers import DEFAULT_LOOKAHEAD, DEFAULT_PIXELS, PixelLayout, numpy_dtype, plan_buffers
from runtime.algorithm.memory_budget import AUTO_BATCH, DevicePlan, MemoryPlan, plan_device_batch
from runtime.algorithm.patch_schedule import RowBand
from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler
from runtime.backends.tensorrt.api import tensorrt_api
from runtime.backends.tensorrt.engine_check import DLA_ROLE, Platform, engine_paths, select_engines
from runtime.backends.tensorrt.runner import ContextMemory, TensorRTBackend
from runtime.bundle.manifest import LOCAL_INPUT, EngineSpec, Normalization, read_manifest, with_min_overlap
from runtime.cuda import open_device
from runtime.cuda.device import Device
from runtime.errors import BundleError, GlsnetError, InputError
from runtime.engines.pixel_upload import RowSource, iter_source_rows

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 6


@dataclass(frozen=True)
class TensorRTPipelineOptions:
    precision: str = "fp16"
    # None: the engines' optimal batch (or the largest within the budget); "auto": the largest that free device memory holds
    batch_size: int | str | None = None
    max_memory: int | None = None  # deprecated spelling of max_device_memory (it was the device budget here)
    max_device_memory: int | None = None  # bytes of device memory for engines, scratch and the schedule's buffers
    lookahead: int = DEFAULT_LOOKAHEAD
    dla_core: int | None = None
    cuda_graphs: bool = False
    cuda_binding: str = "auto"  # auto, cuda-python or pycuda
    device_ordinal: int = 0
    normalization: Normalization | None = None  # None: the bundle's (a Segmenter passes its --bands choice)
    min_overlap: int | None = None  # the patch grid's minimum overlap; None: the bundle's


class TensorRTPipeline:
    """Segments images with a bundle's TensorRT engines on CUDA streams; opened on first use."""

    def __init__(
        self,
        bundle_dir: str | Path,
        options: TensorRTPipelineOptions = TensorRTPipelineOptions(),
        *,
        device: Device | None = None,
        trt: ModuleType | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.options = options
        self._device = device
        self._trt = trt
        self.scheduler: StreamScheduler | None = None
        self.engines: dict[str, TensorRTBackend] = {}
        self.spec: EngineSpec | None = None
        self._opened = False
        self._open_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one image at a time on the shared streams and staging buffers
        self._running_thread: int | None = None
        self._schedulers: dict[int, StreamScheduler] = {}
        self._device_plans: dict[tuple[int, int, PixelLayout, int], DevicePlan] = {}

    # -------------------------------------------------------------- lifecycle
    def open(self) -> "TensorRTPipeline":
        """Deserialise the three engines and reserve their scratch memory; a second open warns and does nothing."""
        with self._open_lock:
            if self._opened:
                warnings.warn(f"the TensorRT pipeline of {self.bundle_dir} is already open; open() did nothing", RuntimeWarning, stacklevel=2)
                return self
            self._open()
        return self

    def _ensure_open(self) -> None:
        with self._open_lock:
            if not self._opened:
                self._open()

    def _open(self) -> None:
        o = self.options
        api = tensorrt_api(self._trt)
        self.manifest = with_min_overlap(read_manifest(self.bundle_dir), o.min_overlap)  # the grid's geometry, --min-overlap applied
        self.device = self._device or open_device(o.cuda_binding, o.device_ordinal)
        info = self.device.info()
        platform = Platform(str(api.version), info.name, info.compute_capability)
        self.spec = select_engines(self.manifest, self.bundle_dir, o.precision, platform, o.dla_core)
        paths = engine_paths(self.bundle_dir, self.spec)
        # one scratch allocation per engine: global, local and fusion run concurrently on their own streams
        self._context_memory = {role: ContextMemory(self.device) for role in ("global", "local", "fusion")}

        def engine(role: str, memory: ContextMemory | None, graphs: bool) -> TensorRTBackend:
            return TensorRTBackend(
                paths[role], self.device, role=role, context_memory=memory, cuda_graphs=graphs, dla_core=self._dla_core_of(role), trt=api.trt
            )

        memory = self._context_memory
        self.engines = {
            "global": engine("global", memory["global"], False),
            "local": engine("local", memory["local"], o.cuda_graphs),
            "fusion": engine("fusion", memory["fusion"], o.cuda_graphs),
        }
        try:
            for role, backend in self.engines.items():
                backend.activate()
                self._check_io(role, backend)
                # sized now for the profile's need, so no batch frees and reallocates it (and synchronises) mid-image
                memory[role].reserve(backend.profile_device_memory)
            self._batch_profile = self._profile_batches()
        except BaseException:
            self._release()
            raise
        self.scheduler = None  # built per batch size by _scheduler_for (the batch may depend on the image size)
        self._schedulers = {}
        self._opened = True

    def _dla_core_of(self, role: str) -> int | None:
        """The DLA core ``role``'s engine was built for (the manifest stamps each engine's device), or None."""
        spec = self.spec
        if spec is None or spec.dla_core is None:
            return None
        device = spec.profiles.get(role, {}).get("device")
        on_dla = device == "dla" if device is not None else role == DLA_ROLE
        return spec.dla_core if on_dla else None

    def close(self) -> None:
        """Release engines, buffers and streams; the next use opens again. Not while another thread segments."""
        with self._open_lock:
            self._release()

    def _release(self) -> None:
        for scheduler in self._schedulers.values():
            scheduler.close()
        self._schedulers = {}
        self._device_plans = {}
        for engine in self.engines.values():
            engine.deactivate()
        self.engines = {}
        for memory in getattr(self, "_context_memory", {}).values():
            memory.release()
        self.scheduler = None
        self._opened = False

    def __enter__(self) -> "TensorRTPipeline":
        self._ensure_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- segmenting
    def iter_rows(
        self,
        source: RowSource,
        progress: Callable[[int, int], None] | None = None,
        *,
        normalization: Normalization | None = None,
        palette: np.ndarray | None = None,
    ) -> Iterator[RowBand]:
        """Finished mask rows of ``source`` (pixels [rows, W, C] from ``read_rows``), top to bottom;
        with ``palette`` each band is a ColouredBand whose colours were mapped on the device.

        Concurrent callers take turns (a lock); one thread cannot interleave two images on one pipeline.
        """
        if self._running_thread == threading.get_ident():
            raise GlsnetError(
                "this thread is already segmenting an image with this TensorRT pipeline; "
                "finish (or close) that iteration before starting another"
            )
        with self._run_lock:
            self._running_thread = threading.get_ident()
            try:
                self._ensure_open()
                self.device.make_current()  # CUDA's current device is per thread; the Segmenter is shared between threads
                norm = normalization or self.options.normalization or self.manifest.normalization
                yield from iter_source_rows(self._scheduler_for, source, norm, progress, palette)
            finally:
                self._running_thread = None

    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan:
        """The batch this pipeline uses for an image of this size (the global engine always sees the whole image)."""
        o = self.options
        batch = self.batch_size_for(height, width)
        planned = self._device_plans.get((height, width, DEFAULT_PIXELS, 0))
        estimate = planned.estimate_bytes if planned is not None else 0
        return MemoryPlan(batch, None, estimate, o.max_device_memory if o.max_device_memory is not None else o.max_memory)

    def segment(self, pixels: np.ndarray, normalization: Normalization | None = None) -> np.ndarray:
        """uint8 image [H, W, C] (or [H, W]) -> uint8 class-index mask [H, W]."""
        source = _ArrayRows(pixels)
        mask = np.zeros((source.height, source.width), dtype=np.uint8)
        started = time.perf_counter()
        for top, rows in self.iter_rows(source, normalization=normalization):
            mask[top : top + rows.shape[0]] = rows
        self.last_seconds = time.perf_counter() - started
        return mask

    def batch_size_for(self, height: int, width: int, pixels: PixelLayout = DEFAULT_PIXELS, colour_channels: int = 0) -> int:
        """The batch the pipeline uses for an image of this size, pixel layout and palette (within the engines' profile)."""
        self._ensure_open()
        low, opt, high = self._batch_profile
        o = self.options
        budget = o.max_device_memory if o.max_device_memory is not None else o.max_memory
        if o.batch_size == AUTO_BATCH or budget is not None:
            key = (height, width, pixels, colour_channels)
            if key not in self._device_plans:  # once per size: later, this pipeline's own buffers are no longer free
                self._device_plans[key] = self.device_plan(height, width, pixels, colour_channels)
            batch = self._device_plans[key].batch_size
        elif o.batch_size is not None:
            batch = int(o.batch_size)
        else:
            batch = opt
        if not low <= batch <= high:
            raise InputError(
                f"batch size {batch} is outside the engines' profile ({low}..{high} patches); "
                "choose a batch in that range or rebuild the engines with --max-batch"
            )
        return batch

    def device_plan(self, height: int, width: int, pixels: PixelLayout = DEFAULT_PIXELS, colour_channels: int = 0) -> DevicePlan:
        """The device memory plan for an image of this size: --batch-size auto and --max-device-memory.

        ``pixels`` and ``colour_channels`` are the uploaded pixels and the palette's channels: the
        buffers planned are the ones the scheduler allocates for them.

        Engines and their scratch memory are already on the device (opened, reserved at open), so
        free memory is what the schedule's buffers may take; a budget counts them too (engine files
        for the weights, the reserved scratch).
        """
        self._ensure_open()
        o = self.options
        low, _, high = self._batch_profile
        budget = o.max_device_memory if o.max_device_memory is not None else o.max_memory
        free = self.device.memory_info()[0]  # a budget above what is free still has to fit what is free
        scratch = sum(m.buffer.nbytes for m in self._context_memory.values() if m.buffer is not None)
        weights = sum(path.stat().st_size for path in engine_paths(self.bundle_dir, self.spec).values()) if self.spec else 0

        def buffers(batch: int) -> int:
            return plan_buffers(self.manifest, o.precision, batch, (height, width), o.lookahead, pixels, colour_channels).device_bytes

        return plan_device_batch(
            buffers,
            0,
            free_bytes=free,
            budget_bytes=budget,
            batch_size=o.batch_size if o.batch_size is not None else AUTO_BATCH,
            max_batch=high,
            min_batch=low,
            fixed_bytes=(scratch + weights) if budget is not None else 0,
        )

    def device_memory_of(self, role: str) -> int:
        """Scratch memory the build recorded for ``role``'s engine (0 when unknown)."""
        profile = (self.spec.profiles if self.spec else {}).get(role, {})
        return int(profile.get("device_memory", 0))

    # -------------------------------------------------------------- helpers
    def _scheduler_for(self, height: int, width: int, pixels: PixelLayout = DEFAULT_PIXELS, colour_channels: int = 0) -> StreamScheduler:
        batch = self.batch_size_for(height, width, pixels, colour_channels)
        if batch not in self._schedulers:
            low, _, high = self._batch_profile
            options = StreamScheduleOptions(batch_size=batch, lookahead=self.options.lookahead, fixed_batch=low == high)
            self._schedulers[batch] = StreamScheduler(self.device, self.engines, self.manifest, self.options.precision, options)
        scheduler = self._schedulers[batch]
        if self.scheduler is not None and self.scheduler is not scheduler:
            # the schedulers share execution contexts and scratch memory but not streams: an abandoned image's
            # work on the last one's streams must finish before this one's streams run the same engines
            self.scheduler.settle()
        self.scheduler = scheduler
        return scheduler

    def _profile_batches(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the local engine's profile, from the manifest stamp or the engine."""
        inputs: Any = (self.spec.profiles.get("local", {}) if self.spec else {}).get("inputs", {})
        shapes = inputs.get(LOCAL_INPUT)
        if shapes:
            return int(shapes[0][0]), int(shapes[1][0]), int(shapes[2][0])
        engine = self.engines["local"].engine
        low, opt, high = engine.get_tensor_profile_shape(LOCAL_INPUT, 0)
        return int(low[0]), int(opt[0]), int(high[0])

    def _check_io(self, role: str, engine: TensorRTBackend) -> None:
        """Names and dtypes (the engine's ``get_tensor_dtype``) against the manifest graph the buffers are sized from."""
        precision = self.options.precision if self.options.precision in self.manifest.graphs else "fp32"
        graph = self.manifest.graph(role, precision)
        expected = {t.name for t in graph.inputs}, {t.name for t in graph.outputs}
        inputs, outputs = engine.input_metadata(), engine.output_metadata()
        found = set(inputs), set(outputs)
        if expected != found:
            raise BundleError(
                f"{self.bundle_dir}: the {role} engine's tensors {sorted(found[0])} -> {sorted(found[1])} do not match "
                f"the manifest's {sorted(expected[0])} -> {sorted(expected[1])}; rebuild the engines"
            )
        metadata = {**inputs, **outputs}
        for spec in (*graph.inputs, *graph.outputs):
            want = numpy_dtype(spec.dtype)
            if metadata[spec.name].dtype != want:
                raise BundleError(
                    f"{self.bundle_dir}: the {role} engine's tensor {spec.name!r} is {metadata[spec.name].dtype} but the manifest's "
                    f"{precision} graph says {want}; the schedule's buffers follow the manifest: rebuild the engines from this bundle's graphs"
                )


class _ArrayRows:
    def __init__(self, pixels: np.ndarray) -> None:
        if not isinstance(pixels, np.ndarray) or pixels.ndim not in (2, 3):
            raise InputError(f"segment() takes a numpy image [H, W, C] or [H, W], got {getattr(pixels, 'shape', type(pixels))}")
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        return self.pixels[top:bottom]

