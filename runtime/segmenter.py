"""The embedding API: ``Segmenter(bundle).segment(image)`` and ``segment_file(path, out_dir)``.

A Segmenter opens the bundle, verifies the graph set of one precision and chooses, once, the
pipeline that runs it (runtime.engines.pipeline): ONNX Runtime with a provider (``engine="onnxruntime"``,
``provider="cpu" | "cuda" | "tensorrt"``), or the bundle's own TensorRT engines on CUDA streams
(``engine="tensorrt"``). The pipeline opens on first use and is reused for every image. A Segmenter
may be shared between threads: ONNX Runtime sessions run concurrently, the TensorRT pipeline takes
images one at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from runtime.algorithm.memory_budget import MemoryPlan, lowest_budget
from runtime.algorithm.scheduler import RowBand, Scheduler, normalization_for
from runtime.bundle.loader import Bundle, open_bundle
from runtime.bundle.manifest import with_min_overlap
from runtime.byte_sizes import parse_memory_size
from runtime.engines.onnxruntime_pipeline import ACTIVATION_FACTORS, OnnxRuntimePipeline
from runtime.engines.pipeline import Pipeline, make_pipeline
from runtime.errors import InputError
from runtime.image_io.input_range import conform_source
from runtime.image_io.readers import ArraySource, ImageSource, open_image
from runtime.image_io.writers import OutputOptions, OutputPaths, write_outputs
from runtime.options import TENSORRT_ENGINE, SegmenterOptions
from runtime.process_memory.heap_release import fixed_mmap_threshold
from runtime.process_memory.rss_timeline import phase

if TYPE_CHECKING:
    from runtime.engines.tensorrt_pipeline import TensorRTPipeline

__all__ = ["ACTIVATION_FACTORS", "Segmenter", "SegmenterOptions", "TENSORRT_ENGINE"]

class Segmenter:
    """Segments images with a bundle on the pipeline its options choose; safe to share between threads."""

    def __init__(
        self,
        bundle: str | Path | Bundle,
        precision: str = "fp32",
        device: str | None = None,
        batch_size: int | None = None,
        max_memory: int | str | None = None,
        threads: int | None = None,
        bands: tuple[int, ...] | list[int] | None = None,
        options: SegmenterOptions | None = None,
        *,
        engine: str = "onnxruntime",
        provider: str | None = None,
        min_overlap: int | None = None,
    ) -> None:
        if options is None:
            options = SegmenterOptions(
                precision=precision,
                engine=engine,
                provider=provider,
                device=device,
                batch_size=batch_size,
                max_memory=parse_memory_size(max_memory),
                threads=threads,
                bands=tuple(bands) if bands is not None else None,
                min_overlap=min_overlap,
            )
        self.options = options
        self._schedule = options.schedule()
        fixed_mmap_threshold()  # before any session allocates: see runtime.process_memory.heap_release
        self.bundle = open_bundle(bundle)
        self.manifest = with_min_overlap(self.bundle.manifest, options.min_overlap)  # a bad --min-overlap fails here
        normalization_for(self.manifest, options.bands)  # a wrong --bands fails here, before any work
        self.graphs = self.bundle.graph_set(options.precision)
        self.pipeline: Pipeline = make_pipeline(self.bundle, options)
        if isinstance(self.pipeline, OnnxRuntimePipeline):
            self.pipeline.open()  # load the sessions now: the manifest is checked against the graphs before any work

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the sessions or engines; the next call opens them again.

        Segmenting is thread-safe, closing is not: call this only when no other thread is segmenting.
        """
        self.pipeline.close()

    @property
    def scheduler(self) -> Scheduler:
        """The ONNX Runtime pipeline's scheduler (activated backends), created on first use."""
        if not isinstance(self.pipeline, OnnxRuntimePipeline):
            raise InputError("this Segmenter runs the TensorRT engine; it has no ONNX Runtime scheduler")
        return self.pipeline.scheduler

    @property
    def tensorrt_pipeline(self) -> "TensorRTPipeline":
        """``engine="tensorrt"``: the bundle's TensorRT engines on CUDA streams."""
        if isinstance(self.pipeline, OnnxRuntimePipeline):
            raise InputError("this Segmenter runs ONNX Runtime; build it with engine='tensorrt' for the TensorRT engines")
        return self.pipeline  # type: ignore[return-value]

    # ------------------------------------------------------------------ arrays
    def segment(self, image: np.ndarray) -> np.ndarray:
        """Image [H, W, C] (or [H, W]) of the bundle's pixel type (or mapped by ``input_range``) -> uint8 class mask [H, W]."""
        source = _array_source(image)
        mask = np.empty((source.height, source.width), dtype=np.uint8)
        for top, rows in self.iter_rows(source):
            mask[top : top + len(rows)] = rows
        return mask

    def _conform(self, source: ImageSource) -> ImageSource:
        """``source`` with its bands checked and its values in the trained range (see runtime.image_io.input_range)."""
        norm = normalization_for(self.manifest, self.options.bands)
        return conform_source(source, self.manifest.input_pixels, norm, self.options.input_range)

    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan:
        """The batch size and global banding this Segmenter would use for an image of this size."""
        return self.pipeline.plan(height, width, source_bytes)

    def lowest_budget(self, height: int, width: int) -> int:
        """The smallest --max-memory this Segmenter accepts for an image of this size (an estimate)."""
        scheduler = self.scheduler
        grid = scheduler.grid_for(height, width)
        return lowest_budget(scheduler.memory_model(grid, self._schedule), self._schedule.batch_size)

    def iter_rows(self, source: ImageSource, progress: Callable[[int, int], None] | None = None) -> Iterator[RowBand]:
        """Finished mask rows of ``source`` (its values brought to the trained range first), top to bottom."""
        return self.pipeline.iter_rows(self._conform(source), progress)

    # ------------------------------------------------------------------ files
    def segment_file(
        self,
        input_path: str | Path,
        output_dir: str | Path | None = None,
        outputs: OutputOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
        paths: OutputPaths | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> OutputPaths:
        """Segment an image file and write its outputs (mask, colour mask, overlay, stats) atomically.

        With ``output_dir`` the files are named after the input (``<stem>_mask.png`` ...); or give
        every path explicitly in ``paths``. On any error no output file is left behind. ``provenance``
        is recorded in the stats JSON (see write_outputs).
        """
        outputs = outputs or OutputOptions()
        source = open_image(input_path, self.options.max_pixels)
        try:
            if paths is None:
                paths = outputs.paths_for(Path(input_path), None if output_dir is None else Path(output_dir))
            return self.segment_source(source, paths, outputs, progress, provenance)
        finally:
            source.close()

    def segment_source(
        self,
        source: ImageSource,
        paths: OutputPaths,
        outputs: OutputOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> OutputPaths:
        """segment_file for an image already opened (e.g. a TIFF read by ranges from object storage); the caller closes it."""
        source = self._conform(source)
        outputs = outputs or OutputOptions()
        palette = np.asarray(self.manifest.palette, dtype=np.uint8) if outputs.color or outputs.overlay else None
        rows = self.pipeline.iter_rows(source, progress, palette=palette)  # GPU pipelines map the palette on the device
        return write_outputs(source, _marked_writing(rows), paths, outputs, self.manifest, provenance)


def _array_source(image: np.ndarray) -> ArraySource:
    if not isinstance(image, np.ndarray):
        raise InputError(f"segment() takes a numpy array [H, W, C], got {type(image).__name__}")
    return ArraySource(image, name=f"array of shape {image.shape}")


def _marked_writing(rows: Iterator[RowBand]) -> Iterator[RowBand]:
    """The rows, with the "writing" phase marked while the writer holds each band (see runtime.process_memory.rss_timeline)."""
    for band in rows:
        with phase("writing"):
            yield band
