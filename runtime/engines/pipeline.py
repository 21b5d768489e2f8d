"""The one interface every way of running a bundle offers, and the choice of one at construction.

A pipeline is ``open`` (load the graphs or engines; a second open warns), ``plan`` (the batch and
global banding for an image size), ``iter_rows`` (finished mask rows of an image source, top to
bottom) and ``close``. Three exist: ONNX Runtime (runtime.engines.onnxruntime_pipeline: the CPU scheduler with
threads, on ORT's CPU or TensorRT execution provider), ONNX Runtime's CUDA provider on the stream
scheduler (runtime.engines.onnxruntime_cuda_pipeline: ``--provider cuda``) and the bundle's own
TensorRT engines on CUDA streams (runtime.engines.tensorrt_pipeline). ``Segmenter`` picks one from its engine and
provider options, once, and never looks at them again.

Which engines and providers exist, and the old ``--device`` spelling, are options (runtime.options).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Protocol

import numpy as np

from runtime.algorithm.memory_budget import MemoryPlan
from runtime.algorithm.patch_schedule import RowBand
from runtime.image_io.readers import ImageSource

if TYPE_CHECKING:
    from runtime.bundle.loader import Bundle
    from runtime.bundle.manifest import Normalization
    from runtime.options import SegmenterOptions


class Pipeline(Protocol):
    """What a Segmenter needs from a way of running the three graphs."""

    def open(self) -> "Pipeline": ...

    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan: ...

    def iter_rows(
        self, source: ImageSource, progress: Callable[[int, int], None] | None = None, *, palette: np.ndarray | None = None
    ) -> Iterator[RowBand]:
        """Finished mask rows, top to bottom; a GPU pipeline given ``palette`` hands out ColouredBands (colours mapped there)."""
        ...

    def close(self) -> None: ...


def make_pipeline(bundle: "Bundle", options: "SegmenterOptions") -> Pipeline:
    """The pipeline ``options`` choose (engine, and provider for ONNX Runtime); nothing is loaded until it is opened."""
    from runtime.algorithm.scheduler import normalization_for

    normalization = normalization_for(bundle.manifest, options.bands)
    if options.engine == "tensorrt":
        from runtime.engines.tensorrt_pipeline import TensorRTPipeline, TensorRTPipelineOptions

        trt_options = TensorRTPipelineOptions(
            precision=options.precision,
            batch_size=options.batch_size,
            max_memory=options.max_memory,
            max_device_memory=options.max_device_memory,
            cuda_graphs=options.cuda_graphs,
            dla_core=options.dla_core,
            normalization=normalization,
            min_overlap=options.min_overlap,
        )
        return TensorRTPipeline(bundle.directory, trt_options)
    if options.ort_provider == "cuda":
        return _ort_cuda_pipeline(bundle, options, normalization)
    from runtime.engines.onnxruntime_pipeline import OnnxRuntimePipeline

    return OnnxRuntimePipeline(bundle, options)


def _ort_cuda_pipeline(bundle: "Bundle", options: "SegmenterOptions", normalization: "Normalization") -> Pipeline:
    """``--provider cuda``: ORT's CUDA sessions on the stream scheduler; refused in one line when ORT has no CUDA provider."""
    from runtime.backends.onnxruntime_cuda import cuda_provider_missing
    from runtime.engines.onnxruntime_cuda_pipeline import OrtCudaOptions, OrtCudaPipeline
    from runtime.errors import MissingDependencyError
    from runtime.optional_import import require

    missing = cuda_provider_missing(require("onnxruntime", "ONNX Runtime's CUDA provider"))
    if missing:
        raise MissingDependencyError(missing)
    cuda_options = OrtCudaOptions(
        precision=options.precision,
        batch_size=options.batch_size,
        max_device_memory=options.max_device_memory,
        normalization=normalization,
        min_overlap=options.min_overlap,
    )
    return OrtCudaPipeline(bundle, cuda_options)
