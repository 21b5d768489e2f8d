"""The bundle's graphs on ONNX Runtime (CPU, CUDA or TensorRT execution provider), scheduled with threads.

One session per graph, created when the pipeline opens (on first use) and reused for every image;
the CPU Scheduler runs them, and may serve several threads at once (sessions are thread-safe; the
lazy creation is locked).
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Callable, Iterator

from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from runtime.bundle import Bundle
from runtime.graph_contract import check_graph
from runtime.image_readers import ArraySource, ImageSource
from runtime.memory_budget import MemoryPlan
from runtime.patch_schedule import ROLES, RowBand
from runtime.scheduler import Scheduler

if TYPE_CHECKING:
    from runtime.segmenter import SegmenterOptions

# Working memory of each graph as a multiple of its input + output bytes (see OnnxRuntimeBackend.memory_estimate),
# measured with ONNX Runtime 1.32 on the CPU for the default configuration (global 6-8x, local 5.2x,
# fusion 9x at batch 6), rounded up.
ACTIVATION_FACTORS = {"global": 8.5, "local": 6.0, "fusion": 10.0}


class OnnxRuntimePipeline:
    """The pipeline interface (runtime.pipeline) on ONNX Runtime sessions and the CPU Scheduler."""

    def __init__(self, bundle: Bundle, options: "SegmenterOptions") -> None:
        self.bundle = bundle
        self.options = options
        self.manifest = bundle.manifest
        self.graphs = bundle.graph_set(options.precision)
        self._schedule = options.schedule()
        self._scheduler: Scheduler | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- lifecycle
    def open(self) -> "OnnxRuntimePipeline":
        """Create the three sessions; a second open warns and does nothing."""
        with self._lock:
            if self._scheduler is not None:
                warnings.warn("the ONNX Runtime pipeline is already open; open() did nothing", RuntimeWarning, stacklevel=2)
                return self
            self._scheduler = Scheduler(self.manifest, *(self._backend(role) for role in ROLES))
        return self

    @property
    def scheduler(self) -> Scheduler:
        """The activated backends' scheduler, opened on first use."""
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.manifest, *(self._backend(role) for role in ROLES))
            return self._scheduler

    def close(self) -> None:
        with self._lock:
            if self._scheduler is not None:
                for backend in (self._scheduler.global_backend, self._scheduler.local_backend, self._scheduler.fusion_backend):
                    backend.deactivate()
            self._scheduler = None

    def _backend(self, role: str) -> OnnxRuntimeBackend:
        o = self.options
        ort_options = OrtOptions(
            device=o.ort_provider,
            threads=o.threads,
            fp16=o.precision == "fp16",
            tensorrt_cache_dir=self.bundle.tensorrt_cache_dir / o.precision if o.ort_provider == "tensorrt" else None,
            activation_factor=ACTIVATION_FACTORS[role],
        )
        backend = OnnxRuntimeBackend(self.graphs.path(role), ort_options).activate()
        check_graph(self.manifest, o.precision, role, backend.input_metadata(), backend.output_metadata(), backend.model_path)
        return backend

    # -------------------------------------------------------------- images
    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan:
        scheduler = self.scheduler
        return scheduler.plan(scheduler.grid_for(height, width), self._schedule, source_bytes)

    def iter_rows(self, source: ImageSource, progress: Callable[[int, int], None] | None = None) -> Iterator[RowBand]:
        """Finished mask rows of ``source``, top to bottom (see Scheduler.iter_rows)."""
        scheduler = self.scheduler
        source_bytes = source.array.nbytes if isinstance(source, ArraySource) else 0
        plan = scheduler.plan(scheduler.grid_for(source.height, source.width), self._schedule, source_bytes)
        return scheduler.iter_rows(source, self._schedule, progress, plan)
