"""What a Segmenter is built with, and which engine and provider it may choose.

A module of its own so that the pipelines (runtime.engines), the batch layer and the CLI read the
options without importing the Segmenter that builds pipelines from them. The old single option
``device`` (cpu | cuda | tensorrt | tensorrt-engine) still works and maps to an engine and provider,
with a deprecation message.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from runtime.algorithm.memory_budget import AUTO_BATCH
from runtime.algorithm.scheduler import ScheduleOptions
from runtime.bundle.manifest import min_overlap_error
from runtime.errors import InputError
from runtime.image_io.input_range import InputRange
from runtime.image_io.readers import DEFAULT_MAX_PIXELS

ENGINES = ("onnxruntime", "tensorrt")
PROVIDERS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers
LEGACY_DEVICES = {
    "cpu": ("onnxruntime", "cpu"),
    "cuda": ("onnxruntime", "cuda"),
    "tensorrt": ("onnxruntime", "tensorrt"),
    "tensorrt-engine": ("tensorrt", None),
}
TENSORRT_ENGINE = "tensorrt-engine"  # the deprecated --device spelling of engine="tensorrt"


@dataclass(frozen=True)
class SegmenterOptions:
    """Everything a Segmenter is built with (the CLI parses its flags into this).

    ``device`` is the deprecated single option (cpu, cuda, tensorrt, tensorrt-engine); when given it
    sets ``engine`` and ``provider`` and warns.
    """

    precision: str = "fp32"
    engine: str = "onnxruntime"
    provider: str | None = None  # ONNX Runtime execution provider; None: cpu
    device: str | None = None
    batch_size: int | str | None = None  # a number, or "auto" (GPU: the largest batch free device memory holds)
    max_memory: int | None = None  # bytes; see runtime.byte_sizes.parse_memory_size
    max_device_memory: int | None = None  # bytes of GPU memory (TensorRT engine): engines, scratch and buffers
    threads: int | None = None
    # ONNX Runtime's pool threads busy-wait between tasks when on. Off by default: each graph has its own pool, and a
    # spinning one takes cores from the step after it (measured while reading and stitching still ran beside the
    # graphs, paper-size bundle at 2448 x 2448 on 2 cores, five pairs of runs: 0.9 s of 15.6 s less with it off)
    thread_spinning: bool = False
    # On the CPU, run the local and fusion graphs as one joined ONNX Runtime session (fp32): one working set
    # per batch instead of two (runtime.backends.graph_join). Off: two sessions, as on every other engine.
    join_patch_graphs: bool = True
    # On the CPU at fp32 and int8 (runtime.engines.onnxruntime_pipeline.KEPT_ACTIVATION_PRECISIONS), serve every
    # graph's activations from one ONNX Runtime arena shared by the sessions, so a run reuses the pages earlier runs
    # touched instead of mapping and zeroing them afresh (runtime.backends.shared_arena). ONNX Runtime never hands
    # them back, so they stay until the process ends: `glsnet run`, which exits after its images, turns it on; a
    # long-lived service leaves it off unless it prefers speed to idle memory. Ignored with max_memory: the memory
    # plan's activation factors were measured without the arena.
    keep_activations: bool = False
    bands: tuple[int, ...] | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    global_band_rows: int | None = None
    global_halo: int | None = None
    min_overlap: int | None = None  # patch grid's minimum overlap in pixels; None: the bundle's patch.min_overlap
    cuda_graphs: bool = False  # TensorRT engine: replay fixed-shape local/fusion batches as CUDA graphs
    dla_core: int | None = None  # TensorRT engine: run the bundle's DLA engine set on this core
    input_range: InputRange | None = None  # how to map other pixel types onto the trained range (input_range.py)

    def __post_init__(self) -> None:
        if self.device is not None:
            engine, provider = warn_legacy_device(self.device)
            object.__setattr__(self, "engine", engine)
            object.__setattr__(self, "provider", provider)
            object.__setattr__(self, "device", None)
        check_choice(self.engine, self.provider)
        if self.batch_size is not None and self.batch_size != AUTO_BATCH:
            if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool):
                raise InputError(f"--batch-size {self.batch_size!r}: give a positive number of patches or {AUTO_BATCH!r}")
            if self.batch_size < 1:
                raise InputError(f"batch size must be >= 1, got {self.batch_size} (or use --batch-size {AUTO_BATCH})")
        if self.min_overlap is not None and (isinstance(self.min_overlap, bool) or not isinstance(self.min_overlap, int) or self.min_overlap < 0):
            raise InputError(min_overlap_error(self.min_overlap, None))  # the upper bound is checked against the bundle (with_min_overlap)
        if self.max_pixels is not None and self.max_pixels < 1:
            raise InputError(f"--max-pixels {self.max_pixels}: the pixel limit must be at least 1")

    @property
    def ort_provider(self) -> str:
        return self.provider or "cpu"

    def schedule(self) -> ScheduleOptions:
        extra = {} if self.global_halo is None else {"global_halo": self.global_halo}
        return ScheduleOptions(
            batch_size=None if self.batch_size == AUTO_BATCH else self.batch_size,  # on the CPU, auto is the memory plan's choice
            max_memory=self.max_memory,
            global_band_rows=self.global_band_rows,
            bands=self.bands,
            serialize_graphs=self.engine == "onnxruntime" and self.ort_provider == "cpu",  # GPU providers overlap the branches on streams
            **extra,
        )


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
