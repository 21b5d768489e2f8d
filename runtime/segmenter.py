"""The embedding API: ``Segmenter(bundle).segment(image)`` and ``segment_file(path, out_dir)``.

A Segmenter opens the bundle, verifies the graph set of one precision, creates one ONNX Runtime
session per graph on first use (CPU, or ORT's CUDA/TensorRT providers), and reuses them for every
image; with ``device="tensorrt-engine"`` it hands images to the bundle's own TensorRT engines
instead. Sessions run concurrently from several threads; the Segmenter's only shared mutable
state (lazy session creation) is locked.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from runtime.bundle import Bundle, open_bundle
from runtime.errors import InputError
from runtime.global_features import GlobalStage
from runtime.heap_release import fixed_mmap_threshold, release_free_heap
from runtime.image_readers import DEFAULT_MAX_PIXELS, ArraySource, ImageSource, open_image
from runtime.image_writers import OutputOptions, OutputPaths, write_outputs
from runtime.memory_budget import MemoryPlan, lowest_budget, parse_memory_size
from runtime.rss_timeline import phase
from runtime.scheduler import RowBand, ScheduleOptions, Scheduler, normalization_for

if TYPE_CHECKING:
    from runtime.backends.tensorrt.pipeline import TensorRTPipeline

# --device tensorrt-engine: the bundle's own TensorRT engines (glsnet-export build --target tensorrt) on
# CUDA streams, instead of an ONNX Runtime execution provider.
TENSORRT_ENGINE = "tensorrt-engine"

# Working memory of each graph as a multiple of its input + output bytes (see OnnxRuntimeBackend.memory_estimate),
# measured with ONNX Runtime 1.32 on the CPU for the default configuration (peak RSS of one run minus RSS
# before it, glibc's mmap threshold fixed): single global graph 6-8x, global stages 1.3-2.8x (stage 0 on
# 560 x 2448 rows: 2.84x), local 5.6x, fusion 4.0x at batch 1 to 8.1x at batch 6; rounded up.
ACTIVATION_FACTORS = {"global": 8.5, "global stage": 3.0, "local": 6.0, "fusion": 8.5}


@dataclass(frozen=True)
class SegmenterOptions:
    """Everything a Segmenter is built with (the CLI parses its flags into this)."""

    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int | None = None
    max_memory: int | None = None  # bytes; see runtime.memory_budget.parse_memory_size
    threads: int | None = None
    bands: tuple[int, ...] | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    global_band_rows: int | None = None
    global_halo: int | None = None

    def schedule(self) -> ScheduleOptions:
        extra = {} if self.global_halo is None else {"global_halo": self.global_halo}
        return ScheduleOptions(
            batch_size=self.batch_size,
            max_memory=self.max_memory,
            global_band_rows=self.global_band_rows,
            bands=self.bands,
            serialize_graphs=self.device == "cpu",  # GPU providers overlap the branches on streams
            **extra,
        )


class Segmenter:
    """Segments images with a bundle's graphs on ONNX Runtime (or its TensorRT engines); safe to share between threads."""

    def __init__(
        self,
        bundle: str | Path | Bundle,
        precision: str = "fp32",
        device: str = "cpu",
        batch_size: int | None = None,
        max_memory: int | str | None = None,
        threads: int | None = None,
        bands: tuple[int, ...] | list[int] | None = None,
        options: SegmenterOptions | None = None,
    ) -> None:
        if options is None:
            options = SegmenterOptions(
                precision=precision,
                device=device,
                batch_size=batch_size,
                max_memory=parse_memory_size(max_memory),
                threads=threads,
                bands=tuple(bands) if bands is not None else None,
            )
        self.options = options
        fixed_mmap_threshold()  # before any session allocates: see runtime.heap_release
        self.bundle = open_bundle(bundle)
        self.manifest = self.bundle.manifest
        normalization_for(self.manifest, options.bands)  # a wrong --bands fails here, before any work
        self.graphs = self.bundle.graph_set(options.precision)
        self._schedule = options.schedule()
        self._scheduler: Scheduler | None = None
        self._lock = threading.Lock()
        self._tensorrt: "TensorRTPipeline | None" = None

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the sessions; the next call creates them again.

        Segmenting is thread-safe, closing is not: call this only when no other thread is segmenting.
        """
        with self._lock:
            if self._scheduler is not None:
                scheduler = self._scheduler
                for backend in (scheduler.global_backend, scheduler.local_backend, scheduler.fusion_backend):
                    backend.deactivate()
                for stage in scheduler.global_stages:
                    stage.backend.deactivate()
            self._scheduler = None
            if self._tensorrt is not None:
                self._tensorrt.close()
            self._tensorrt = None

    @property
    def scheduler(self) -> Scheduler:
        """The activated backends, created on first use."""
        with self._lock:
            if self._scheduler is None:
                stages = tuple(GlobalStage(self._backend("global stage", g.path), g.stride, g.halo) for g in self.graphs.global_stages)
                # with stage graphs the single global graph is loaded only if something asks for it (its weights
                # would be a second resident copy of ResNet18's)
                whole = self._backend("global", self.graphs.path("global"), activate=not stages)
                local, fusion = (self._backend(role, self.graphs.path(role)) for role in ("local", "fusion"))
                self._scheduler = Scheduler(self.manifest, whole, local, fusion, global_stages=stages)
                release_free_heap()  # the parsed graphs and load-time copies: about 170 MB on the default bundle
            return self._scheduler

    @property
    def tensorrt_pipeline(self) -> "TensorRTPipeline":
        """``--device tensorrt-engine``: the bundle's TensorRT engines on CUDA streams, opened on first use."""
        from runtime.backends.tensorrt.pipeline import TensorRTPipeline, TensorRTPipelineOptions

        with self._lock:
            if self._tensorrt is None:
                o = self.options
                options = TensorRTPipelineOptions(precision=o.precision, batch_size=o.batch_size, max_memory=o.max_memory)
                self._tensorrt = TensorRTPipeline(self.bundle.directory, options).open()
            return self._tensorrt

    def _backend(self, role: str, path: Path, activate: bool = True) -> OnnxRuntimeBackend:
        o = self.options
        ort_options = OrtOptions(
            device=o.device,
            threads=o.threads,
            fp16=o.precision == "fp16",
            tensorrt_cache_dir=self.bundle.tensorrt_cache_dir / o.precision if o.device == "tensorrt" else None,
            activation_factor=ACTIVATION_FACTORS[role],
        )
        backend = OnnxRuntimeBackend(path, ort_options)
        return backend.activate() if activate else backend

    # ------------------------------------------------------------------ arrays
    def segment(self, image: np.ndarray) -> np.ndarray:
        """uint8 image [H, W, C] (or [H, W]) -> uint8 class-index mask [H, W]."""
        if self.options.device == TENSORRT_ENGINE:
            return self.tensorrt_pipeline.segment(image, normalization_for(self.manifest, self.options.bands))
        return self.scheduler.segment(_array_source(image), self._schedule)

    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan:
        """The batch size and global banding this Segmenter would use for an image of this size."""
        if self.options.device == TENSORRT_ENGINE:
            batch = self.tensorrt_pipeline.batch_size_for(height, width)
            return MemoryPlan(batch, None, 0, self.options.max_memory)
        scheduler = self.scheduler
        return scheduler.plan(scheduler.grid_for(height, width), self._schedule, source_bytes)

    def lowest_budget(self, height: int, width: int) -> int:
        """The smallest --max-memory this Segmenter accepts for an image of this size (an estimate)."""
        scheduler = self.scheduler
        grid = scheduler.grid_for(height, width)
        return lowest_budget(scheduler.memory_model(grid, self._schedule), self._schedule.batch_size)

    def iter_rows(self, source: ImageSource, progress: Callable[[int, int], None] | None = None) -> Iterator[RowBand]:
        """Finished mask rows of ``source``, top to bottom (see Scheduler.iter_rows)."""
        if self.options.device == TENSORRT_ENGINE:
            return self.tensorrt_pipeline.iter_rows(source, normalization_for(self.manifest, self.options.bands), progress)
        scheduler = self.scheduler
        source_bytes = source.array.nbytes if isinstance(source, ArraySource) else 0
        plan = scheduler.plan(scheduler.grid_for(source.height, source.width), self._schedule, source_bytes)
        return scheduler.iter_rows(source, self._schedule, progress, plan)

    # ------------------------------------------------------------------ files
    def segment_file(
        self,
        input_path: str | Path,
        output_dir: str | Path | None = None,
        outputs: OutputOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
        paths: OutputPaths | None = None,
    ) -> OutputPaths:
        """Segment an image file and write its outputs (mask, colour mask, overlay, stats) atomically.

        With ``output_dir`` the files are named after the input (``<stem>_mask.png`` ...); or give
        every path explicitly in ``paths``. On any error no output file is left behind.
        """
        outputs = outputs or OutputOptions()
        source = open_image(input_path, self.options.max_pixels)
        try:
            if paths is None:
                paths = outputs.paths_for(Path(input_path), None if output_dir is None else Path(output_dir))
            return write_outputs(source, _marked_writing(self.iter_rows(source, progress)), paths, outputs, self.manifest)
        finally:
            source.close()


def _array_source(image: np.ndarray) -> ArraySource:
    if not isinstance(image, np.ndarray):
        raise InputError(f"segment() takes a numpy array [H, W, C], got {type(image).__name__}")
    return ArraySource(image, name=f"array of shape {image.shape}")


def _marked_writing(rows: Iterator[RowBand]) -> Iterator[RowBand]:
    """The rows, with the "writing" phase marked while the writer holds each band (see runtime.rss_timeline)."""
    for band in rows:
        with phase("writing"):
            yield band
