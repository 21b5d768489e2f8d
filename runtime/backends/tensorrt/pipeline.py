"""A bundle's three TensorRT engines and the stream scheduler, opened together: what ``glsnet run`` uses on a GPU.

Opening checks the engines against this machine (engine_check), verifies their checksums, and wires
context memory: the local and fusion engines share one scratch allocation (same stream, never
concurrent); the global engine has its own (it runs concurrently with the local batches).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from runtime.backends.tensorrt.api import tensorrt_api
from runtime.backends.tensorrt.buffers import DEFAULT_LOOKAHEAD, largest_batch_within
from runtime.backends.tensorrt.engine_check import Platform, engine_paths, select_engines
from runtime.backends.tensorrt.runner import ContextMemory, TensorRTBackend
from runtime.cuda import open_device
from runtime.cuda.device import Device
from runtime.errors import BundleError, InputError
from runtime.manifest import LOCAL_INPUT, EngineSpec, Normalization, read_manifest
from runtime.preprocess import normalize
from runtime.stream_scheduler import RowBand, StreamScheduleOptions, StreamScheduler

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 6
READ_ROWS = 512  # rows normalised at a time while filling the pinned image


class RowSource(Protocol):
    """What the pipeline reads images through (runtime.image_readers.ImageSource fits)."""

    height: int
    width: int

    def read_rows(self, top: int, bottom: int) -> np.ndarray: ...


@dataclass(frozen=True)
class TensorRTPipelineOptions:
    precision: str = "fp16"
    batch_size: int | None = None  # None: the engines' optimal batch, or the largest within max_memory
    max_memory: int | None = None  # bytes of device memory for I/O buffers and engine scratch
    lookahead: int = DEFAULT_LOOKAHEAD
    dla_core: int | None = None
    cuda_graphs: bool = False
    cuda_binding: str = "auto"  # auto, cuda-python or pycuda
    device_ordinal: int = 0


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

    # -------------------------------------------------------------- lifecycle
    def open(self) -> "TensorRTPipeline":
        if self.scheduler is not None:
            return self
        o = self.options
        api = tensorrt_api(self._trt)
        self.manifest = read_manifest(self.bundle_dir)
        self.device = self._device or open_device(o.cuda_binding, o.device_ordinal)
        info = self.device.info()
        platform = Platform(str(api.version), info.name, info.compute_capability)
        self.spec = select_engines(self.manifest, self.bundle_dir, o.precision, platform, o.dla_core)
        paths = engine_paths(self.bundle_dir, self.spec)
        shared = ContextMemory(self.device)  # local and fusion: one stream, never concurrent
        self.engines = {
            "global": TensorRTBackend(paths["global"], self.device, role="global", trt=api.trt),
            "local": TensorRTBackend(paths["local"], self.device, role="local", context_memory=shared, cuda_graphs=o.cuda_graphs, trt=api.trt),
            "fusion": TensorRTBackend(paths["fusion"], self.device, role="fusion", context_memory=shared, cuda_graphs=o.cuda_graphs, trt=api.trt),
        }
        self._shared_memory = shared
        for role, engine in self.engines.items():
            engine.activate()
            self._check_io(role, engine)
        self._batch_profile = self._profile_batches()
        self.scheduler = None  # built per image size by _scheduler_for (the batch may depend on it)
        self._schedulers: dict[int, StreamScheduler] = {}
        return self

    def close(self) -> None:
        for scheduler in getattr(self, "_schedulers", {}).values():
            scheduler.close()
        self._schedulers = {}
        for engine in self.engines.values():
            engine.deactivate()
        self.engines = {}
        if hasattr(self, "_shared_memory"):
            self._shared_memory.release()
        self.scheduler = None

    def __enter__(self) -> "TensorRTPipeline":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- segmenting
    def iter_rows(
        self,
        source: RowSource,
        normalization: Normalization | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[RowBand]:
        """Finished mask rows of ``source`` (pixels [rows, W, C] from ``read_rows``), top to bottom."""
        self.open()
        norm = normalization or self.manifest.normalization
        height, width = source.height, source.width
        scheduler = self._scheduler_for(height, width)

        def write_image(target: np.ndarray) -> None:
            for top in range(0, height, READ_ROWS):
                bottom = min(top + READ_ROWS, height)
                target[:, top:bottom, :width] = normalize(source.read_rows(top, bottom), norm)

        return scheduler.iter_rows(height, width, write_image, progress)

    def segment(self, pixels: np.ndarray, normalization: Normalization | None = None) -> np.ndarray:
        """uint8 image [H, W, C] (or [H, W]) -> uint8 class-index mask [H, W]."""
        source = _ArrayRows(pixels)
        mask = np.zeros((source.height, source.width), dtype=np.uint8)
        started = time.perf_counter()
        for top, rows in self.iter_rows(source, normalization):
            mask[top : top + rows.shape[0]] = rows
        self.last_seconds = time.perf_counter() - started
        return mask

    def batch_size_for(self, height: int, width: int) -> int:
        """The batch the pipeline uses for an image of this size (within the engines' profile)."""
        self.open()
        low, opt, high = self._batch_profile
        o = self.options
        if o.batch_size is not None:
            batch = o.batch_size
        elif o.max_memory is not None:
            # the global engine has its own scratch memory; local and fusion share one allocation
            scratch = self.device_memory_of("global") + max(self.device_memory_of("local"), self.device_memory_of("fusion"))
            batch = largest_batch_within(self.manifest, o.precision, (height, width), o.max_memory, scratch, high, o.lookahead)
        else:
            batch = opt
        if not low <= batch <= high:
            raise InputError(
                f"batch size {batch} is outside the engines' profile ({low}..{high} patches); "
                "choose a batch in that range or rebuild the engines with --max-batch"
            )
        return batch

    def device_memory_of(self, role: str) -> int:
        """Scratch memory the build recorded for ``role``'s engine (0 when unknown)."""
        profile = (self.spec.profiles if self.spec else {}).get(role, {})
        return int(profile.get("device_memory", 0))

    # -------------------------------------------------------------- helpers
    def _scheduler_for(self, height: int, width: int) -> StreamScheduler:
        batch = self.batch_size_for(height, width)
        if batch not in self._schedulers:
            low, _, high = self._batch_profile
            options = StreamScheduleOptions(batch_size=batch, lookahead=self.options.lookahead, fixed_batch=low == high)
            self._schedulers[batch] = StreamScheduler(self.device, self.engines, self.manifest, self.options.precision, options)
        self.scheduler = self._schedulers[batch]
        return self.scheduler

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
        graph = self.manifest.graph(role, self.options.precision if self.options.precision in self.manifest.graphs else "fp32")
        expected = {t.name for t in graph.inputs}, {t.name for t in graph.outputs}
        found = set(engine.input_metadata()), set(engine.output_metadata())
        if expected != found:
            raise BundleError(
                f"{self.bundle_dir}: the {role} engine's tensors {sorted(found[0])} -> {sorted(found[1])} do not match "
                f"the manifest's {sorted(expected[0])} -> {sorted(expected[1])}; rebuild the engines"
            )


class _ArrayRows:
    def __init__(self, pixels: np.ndarray) -> None:
        if not isinstance(pixels, np.ndarray) or pixels.ndim not in (2, 3):
            raise InputError(f"segment() takes a numpy image [H, W, C] or [H, W], got {getattr(pixels, 'shape', type(pixels))}")
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        return self.pixels[top:bottom]

