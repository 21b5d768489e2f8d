"""The one interface every way of running a bundle offers, and the choice of one at construction.

A pipeline is ``open`` (load the graphs or engines; a second open warns), ``plan`` (the batch and
global banding for an image size), ``iter_rows`` (finished mask rows of an image source, top to
bottom) and ``close``. Two exist: ONNX Runtime (runtime.engines.onnxruntime_pipeline: the CPU scheduler with
threads, on ORT's CPU, CUDA or TensorRT execution provider) and the bundle's own TensorRT engines on
CUDA streams (runtime.engines.tensorrt_pipeline). ``Segmenter`` picks one from its engine and
provider options, once, and never looks at them again.

The old single option ``device`` (cpu | cuda | tensorrt | tensorrt-engine) still works and maps to an
engine and provider, with a deprecation message.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from runtime.errors import InputError
from runtime.image_io.readers import ImageSource
from runtime.algorithm.memory_budget import MemoryPlan
from runtime.algorithm.patch_schedule import RowBand

if TYPE_CHECKING:
    from runtime.bundle.loader import Bundle
    from runtime.segmenter import SegmenterOptions

ENGINES = ("onnxruntime", "tensorrt")
PROVIDERS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers
LEGACY_DEVICES = {
    "cpu": ("onnxruntime", "cpu"),
    "cuda": ("onnxruntime", "cuda"),
    "tensorrt": ("onnxruntime", "tensorrt"),
    "tensorrt-engine": ("tensorrt", None),
}


class Pipeline(Protocol):
    """What a Segmenter needs from a way of running the three graphs."""

    def open(self) -> "Pipeline": ...

    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan: ...

    def iter_rows(self, source: ImageSource, progress: Callable[[int, int], None] | None = None) -> Iterator[RowBand]: ...

    def close(self) -> None: ...


def legacy_device(device: str) -> tuple[str, str | None]:
    """(engine, provider) for an old ``--device`` value, with the deprecation message it deserves."""
    if device not in LEGACY_DEVICES:
        raise InputError(f"--device {device!r} is not one of {', '.join(LEGACY_DEVICES)} (and --device is deprecated: use --engine/--provider)")
    engine, provider = LEGACY_DEVICES[device]
    return engine, provider


def deprecation_message(device: str) -> str:
    engine, provider = legacy_device(device)
    new = "--engine tensorrt" if engine == "tensorrt" else f"--engine onnxruntime --provider {provider}"
    return f"--device {device} is deprecated and will be removed; use {new}"


def warn_legacy_device(device: str) -> tuple[str, str | None]:
    engine_provider = legacy_device(device)
    warnings.warn(deprecation_message(device), DeprecationWarning, stacklevel=3)
    return engine_provider


def check_choice(engine: str, provider: str | None) -> None:
    """``provider`` None: ONNX Runtime's CPU provider (and the only valid value with the TensorRT engine)."""
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if provider is not None and provider not in PROVIDERS:
        raise InputError(f"provider {provider!r} is not one of {', '.join(PROVIDERS)} (ONNX Runtime execution providers)")
    if engine == "tensorrt" and provider is not None:
        raise InputError(
            f"--provider {provider} applies to --engine onnxruntime only; --engine tensorrt runs the bundle's own "
            "TensorRT engines on CUDA streams (drop --provider)"
        )


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
            cuda_graphs=options.cuda_graphs,
            dla_core=options.dla_core,
            normalization=normalization,
        )
        return TensorRTPipeline(bundle.directory, trt_options)
    from runtime.engines.onnxruntime_pipeline import OnnxRuntimePipeline

    return OnnxRuntimePipeline(bundle, options)
