"""The bundle's graphs on ONNX Runtime's CUDA provider, driven by the stream scheduler: ``--provider cuda``.

The same GPU schedule as the TensorRT pipeline (runtime.algorithm.stream_scheduler: pixels in,
mask rows out, global features kept on the device, normalisation and stitching on the device),
with three ORT CUDA sessions as the engines (runtime.backends.onnxruntime_cuda), each created on
the stream the scheduler runs its graph on and fed the scheduler's device buffers by I/O binding.
fp16 bundles run their fp16 graphs. The single global graph runs on the whole image (a GPU holds
it); the global stage graphs are for the CPU's memory.

One device, four streams and one set of buffers serve every image, so images are segmented one at
a time (a lock); the device is made current on each calling thread.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterator

import numpy as np

from runtime.algorithm.device_buffers import DEFAULT_LOOKAHEAD, DEFAULT_PIXELS, PixelLayout, graph_tensors, plan_buffers, tensor_shape
from runtime.algorithm.memory_budget import AUTO_BATCH, DEFAULT_BATCH_SIZE, DevicePlan, MemoryPlan, plan_device_batch
from runtime.algorithm.patch_grid import make_grid
from runtime.algorithm.patch_schedule import ROLES, RowBand
from runtime.algorithm.stream_scheduler import STREAMS, StreamScheduleOptions, StreamScheduler
from runtime.backends.onnxruntime_cuda import OrtCudaEngine
from runtime.bundle.loader import Bundle
from runtime.bundle.manifest import Normalization, with_min_overlap
from runtime.cuda import open_device
from runtime.cuda.device import Device
from runtime.engines.graph_contract import check_graph
from runtime.engines.onnxruntime_pipeline import ACTIVATION_FACTORS
from runtime.engines.pixel_upload import RowSource, iter_source_rows

MAX_AUTO_BATCH = 64


@dataclass(frozen=True)
class OrtCudaOptions:
    precision: str = "fp32"
    batch_size: int | str | None = None  # None: 6 (the paper's), or the largest within the budget; "auto": from free memory
    max_device_memory: int | None = None
    lookahead: int = DEFAULT_LOOKAHEAD
    device_ordinal: int = 0
    cuda_binding: str = "auto"
    normalization: Normalization | None = None
    min_overlap: int | None = None  # the patch grid's minimum overlap; None: the bundle's


class OrtCudaPipeline:
    """The pipeline interface (open, plan, iter_rows, close) on ORT CUDA sessions and the stream scheduler."""

    def __init__(self, bundle: Bundle, options: OrtCudaOptions = OrtCudaOptions(), *, device: Device | None = None, ort: ModuleType | None = None) -> None:
        self.bundle = bundle
        self.manifest = with_min_overlap(bundle.manifest, options.min_overlap)  # the grid's geometry, --min-overlap applied
        self.options = options
        self._device = device
        self._ort = ort
        self.engines: dict[str, OrtCudaEngine] = {}
        self._schedulers: dict[int, StreamScheduler] = {}
        self.scheduler: StreamScheduler | None = None  # the one the last image ran on
        self._plans: dict[tuple[int, int, PixelLayout, int], DevicePlan] = {}
        self._opened = False
        self._open_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def open(self) -> "OrtCudaPipeline":
        with self._open_lock:
            if self._opened:
                warnings.warn("the ONNX Runtime CUDA pipeline is already open; open() did nothing", RuntimeWarning, stacklevel=2)
                return self
            self._open()
        return self

    def _ensure_open(self) -> None:
        with self._open_lock:
            if not self._opened:
                self._open()

    def _open(self) -> None:
        o = self.options
        self.device = self._device or open_device(o.cuda_binding, o.device_ordinal)
        self.device.make_current()
        # the sessions are created on the streams their graphs run on (user_compute_stream), and every scheduler uses them
        self.streams = {name: self.device.create_stream(name) for name in STREAMS}
        streams = self.streams
        graphs = self.bundle.graph_set(o.precision)
        try:
            for role in ROLES:
                engine = OrtCudaEngine(graphs.path(role), self.device, streams[role], role=role, ort=self._ort).activate()
                check_graph(self.manifest, o.precision, role, engine.inputs, engine.outputs, engine.model_path)
                self.engines[role] = engine
        except BaseException:
            self._release()
            raise
        self._opened = True

    def close(self) -> None:
        with self._open_lock:
            self._release()

    def _release(self) -> None:
        for scheduler in self._schedulers.values():
            scheduler.close()
        self._schedulers = {}
        self.scheduler = None
        self._plans = {}
        for engine in self.engines.values():
            engine.deactivate()
        self.engines = {}
        for stream in getattr(self, "streams", {}).values():
            self.device.destroy_stream(stream)
        self.streams = {}
        self._opened = False

    def __enter__(self) -> "OrtCudaPipeline":
        self._ensure_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- segmenting
    def iter_rows(
        self, source: RowSource, progress: Callable[[int, int], None] | None = None, *, palette: np.ndarray | None = None
    ) -> Iterator[RowBand]:
        """Finished mask rows of ``source``, top to bottom (with ``palette``: ColouredBands, colours mapped on the device)."""
        with self._run_lock:
            self._ensure_open()
            self.device.make_current()
            norm = self.options.normalization or self.manifest.normalization
            yield from iter_source_rows(self._scheduler_for, source, norm, progress, palette)

    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan:
        batch = self.batch_size_for(height, width)
        planned = self._plans.get((height, width, DEFAULT_PIXELS, 0))
        return MemoryPlan(batch, None, planned.estimate_bytes if planned else 0, self.options.max_device_memory)

    def batch_size_for(self, height: int, width: int, pixels: PixelLayout = DEFAULT_PIXELS, colour_channels: int = 0) -> int:
        """The batch for an image of this size, pixel layout and palette: the option, or planned on the device.

        The plan counts the scheduler's buffers for these pixels, ONNX Runtime's working memory per
        run (``activation_bytes``, allocated by its arena while the graphs run, so not yet taken from
        free memory) and, under a budget, the graphs' weights (their files' sizes).
        """
        o = self.options
        if o.batch_size != AUTO_BATCH and o.max_device_memory is None:
            return int(o.batch_size or DEFAULT_BATCH_SIZE)
        self._ensure_open()
        key = (height, width, pixels, colour_channels)
        if key not in self._plans:

            def buffers(batch: int) -> int:
                return plan_buffers(self.manifest, o.precision, batch, (height, width), o.lookahead, pixels, colour_channels).device_bytes

            self._plans[key] = plan_device_batch(
                buffers,
                lambda batch: self.activation_bytes(height, width, batch),
                free_bytes=self.device.memory_info()[0],
                budget_bytes=o.max_device_memory,
                batch_size=o.batch_size if o.batch_size is not None else AUTO_BATCH,
                max_batch=MAX_AUTO_BATCH,
                fixed_bytes=self.weight_bytes() if o.max_device_memory is not None else 0,
            )
        return self._plans[key].batch_size

    def weight_bytes(self) -> int:
        """The three graphs' file sizes: their weights on the device (free memory already lacks them; a budget must count them)."""
        graphs = self.bundle.graph_set(self.options.precision)
        return sum(graphs.path(role).stat().st_size for role in ROLES)

    def activation_bytes(self, height: int, width: int, batch: int) -> int:
        """ONNX Runtime's working memory for one run of each graph (they run concurrently on their own streams).

        The CPU plan's estimate (ACTIVATION_FACTORS x each graph's input + output bytes at 4 bytes an
        element, as OnnxRuntimeBackend.memory_estimate): measured on the CPU provider; the CUDA
        provider runs the same graphs, so it is the best estimate at hand.
        """
        patch = self.manifest.patch
        grid = make_grid(height, width, patch.size, patch.min_overlap)
        padded = (grid.padded_height, grid.padded_width)
        total = 0.0
        for role in ROLES:
            tensors = graph_tensors(self.manifest.graph(role, self.options.precision)).values()
            elements = sum(math.prod(tensor_shape(t, role, batch, padded, patch)) for t in tensors)
            total += ACTIVATION_FACTORS[role] * elements * 4
        return int(total)

    def _scheduler_for(self, height: int, width: int, pixels: PixelLayout = DEFAULT_PIXELS, colour_channels: int = 0) -> StreamScheduler:
        batch = self.batch_size_for(height, width, pixels, colour_channels)
        if batch not in self._schedulers:
            options = StreamScheduleOptions(batch_size=batch, lookahead=self.options.lookahead)
            self._schedulers[batch] = StreamScheduler(self.device, self.engines, self.manifest, self.options.precision, options, self.streams)
        self.scheduler = self._schedulers[batch]
        return self.scheduler
