"""The rows gpu-check's table measures on a real GPU, each with what it needs and how it runs.

- PyTorch on the stream scheduler (torch engines on cuda-python streams, stitching in PyTorch on
  the device: export.gpu.gpu_check_cuda), fp32 with TF32 allowed and fp16 (autocast), and PyTorch
  eager (glsnet.inference.predict_mask on CUDA) in the same two precisions;
- ONNX Runtime's CUDA provider on the stream scheduler (runtime.engines.onnxruntime_cuda_pipeline),
  the bundle's fp32 and fp16 graphs;
- the bundle's TensorRT engines (runtime.engines.tensorrt_pipeline), fp16 and int8, when it has them
  for this GPU (they are not built here: a build does not fit the check's six minutes);
- glsnet-cpp --device cuda, fp32 and fp16: the C++ runtime's library on ONNX Runtime's CUDA provider,
  called through its C ABI (export.gpu.cpp_runner), when ``make cpp`` linked a GPU-enabled ONNX Runtime.

Every candidate's ``missing`` answers in one line without touching the GPU more than opening it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.gpu.gpu_table import Candidate
from runtime.errors import GlsnetError, MissingDependencyError

TF32 = "fp32 (TF32)"


def _torch_missing() -> str | None:
    from export.gpu.gpu_check_cuda import cuda_level_missing
    from runtime.optional_import import available

    reason = cuda_level_missing()
    if reason is None and not available("array_api_compat"):
        reason = "array-api-compat is not installed (pip install 'glsnet-deploy[cuda]')"
    return reason


def _eager_missing() -> str | None:
    from runtime.optional_import import available

    if not available("torch"):
        return "PyTorch is not installed (pip install 'glsnet-deploy[train]')"
    import torch

    return None if torch.cuda.is_available() else f"PyTorch {torch.__version__} sees no CUDA GPU"


def _set_precision(torch: Any, precision: str) -> None:
    tf32 = precision == TF32
    torch.backends.cuda.matmul.allow_tf32 = tf32 or precision == "fp16"
    torch.backends.cudnn.allow_tf32 = tf32 or precision == "fp16"
    torch.backends.cudnn.benchmark = True


class TorchScheduledRunner:
    """The model's three sub-modules as engines on the stream scheduler; pixels in, mask out."""

    def __init__(self, model: Any, manifest: Any, precision: str, batch_size: int) -> None:
        import torch

        from export.gpu.gpu_check_cuda import TorchEngine, torch_cuda_device
        from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler

        self.torch = torch
        _set_precision(torch, precision)
        self.device = torch_cuda_device(torch, 0)
        half = precision == "fp16"

        def wrapped(function: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any) -> Any:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                    return function(*args)

            return run

        model = model.cuda().eval()
        engines = {role: TorchEngine(role, wrapped(getattr(model, attr)), self.device.launcher) for role, attr in (("global", "global_branch"), ("local", "local_branch"), ("fusion", "fusion"))}
        self.manifest = manifest
        self.scheduler = StreamScheduler(self.device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=batch_size))
        self._lock = threading.Lock()  # one image at a time on one scheduler; two in flight overlap decoding with the GPU

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.scheduler.segment_pixels(pixels, self.manifest.normalization)

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        self.device.peak_allocated_bytes = self.device.allocated_bytes

    def peak_allocator_bytes(self) -> int:
        return int(self.torch.cuda.max_memory_allocated() + self.device.peak_allocated_bytes)

    def close(self) -> None:
        self.scheduler.close()
        self.device.close()


class TorchEagerRunner:
    """glsnet.inference.predict_mask on CUDA: the reference implementation, in the same precision."""

    def __init__(self, model: Any, manifest: Any, precision: str, batch_size: int) -> None:
        import torch

        _set_precision(torch, precision)
        self.torch, self.model, self.manifest = torch, model.cuda().eval(), manifest
        self.half, self.batch_size = precision == "fp16", batch_size

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        from glsnet.inference import predict_mask
        from runtime.image_io.preprocess import normalize

        image = self.torch.as_tensor(normalize(pixels, self.manifest.normalization)).cuda()
        with self.torch.no_grad(), self.torch.autocast("cuda", dtype=self.torch.float16, enabled=self.half):
            return predict_mask(self.model, image, self.batch_size)

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()

    def peak_allocator_bytes(self) -> int:
        return int(self.torch.cuda.max_memory_allocated())

    def close(self) -> None:
        self.torch.cuda.empty_cache()


class PipelineRunner:
    """A runtime pipeline (ORT CUDA or TensorRT): iter_rows of an array source, the schedule's Device allocations as its allocator."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        pipeline.open()

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        from runtime.image_io.readers import ArraySource

        mask = np.zeros(pixels.shape[:2], dtype=np.uint8)
        for top, rows in self.pipeline.iter_rows(ArraySource(pixels)):  # the last rows are on the host: the GPU is done
            mask[top : top + len(rows)] = rows
        return mask

    def synchronize(self) -> None:
        """Nothing to wait for: the mask's last rows came back after the last kernel."""

    def reset_peak(self) -> None:
        device = self.pipeline.device
        device.peak_allocated_bytes = device.allocated_bytes

    def peak_allocator_bytes(self) -> int:
        return int(self.pipeline.device.peak_allocated_bytes)

    def close(self) -> None:
        self.pipeline.close()


def _ort_missing(bundle_dir: Path, precision: str) -> str | None:
    from runtime.backends.onnxruntime_cuda import cuda_provider_missing
    from runtime.bundle.loader import open_bundle
    from runtime.optional_import import available

    if not available("onnxruntime"):
        return "onnxruntime is not installed (pip install 'glsnet-deploy[gpu]')"
    import onnxruntime

    reason = cuda_provider_missing(onnxruntime)
    if reason:
        return reason
    if precision not in open_bundle(bundle_dir).manifest.graphs:
        return f"the bundle has no {precision} graphs (glsnet-export build {bundle_dir} --{precision})"
    return _device_missing()


def _device_missing() -> str | None:
    from runtime.optional_import import available

    if not available("array_api_compat") or not available("cupy"):
        return "CuPy and array-api-compat are needed for stitching on the device (pip install 'glsnet-deploy[cuda]')"
    try:
        from runtime.cuda import open_device

        open_device().close()
    except (MissingDependencyError, GlsnetError) as exc:
        return str(exc).splitlines()[0]
    return None


def _tensorrt_missing(bundle_dir: Path, precision: str) -> str | None:
    from runtime.backends.tensorrt.api import tensorrt_api
    from runtime.bundle.manifest import read_manifest

    try:
        api = tensorrt_api(feature="gpu-check's TensorRT rows")
    except (MissingDependencyError, GlsnetError) as exc:
        return str(exc).splitlines()[0]
    built = [e for e in read_manifest(bundle_dir).engines if e.target == "tensorrt" and e.precision == precision]
    if not built:
        return f"no {precision} TensorRT engines in the bundle (glsnet-export build {bundle_dir} --{precision} --target tensorrt; TensorRT {api.version})"
    return _device_missing()


def gpu_candidates(bundle_dir: Path, model: Callable[[], Any], batch_size: int, cpp_build: Path | None = None) -> list[Candidate]:
    """The table's rows in order; ``model`` loads the torch model the bundle was exported from (only when a torch row runs);
    ``cpp_build``: the C++ build folder (default: $GLSNET_CPP_BUILD or build/cpp)."""

    def manifest() -> Any:
        from runtime.bundle.manifest import read_manifest

        return read_manifest(bundle_dir)

    def ort(precision: str) -> Candidate:
        def open_runner() -> PipelineRunner:
            from runtime.bundle.loader import open_bundle
            from runtime.engines.onnxruntime_cuda_pipeline import OrtCudaOptions, OrtCudaPipeline

            return PipelineRunner(OrtCudaPipeline(open_bundle(bundle_dir), OrtCudaOptions(precision=precision, batch_size=batch_size)))

        return Candidate("ONNX Runtime CUDA", precision, lambda: _ort_missing(bundle_dir, precision), open_runner)

    def tensorrt(precision: str) -> Candidate:
        def open_runner() -> PipelineRunner:
            from runtime.engines.tensorrt_pipeline import TensorRTPipeline, TensorRTPipelineOptions

            return PipelineRunner(TensorRTPipeline(bundle_dir, TensorRTPipelineOptions(precision=precision)))

        return Candidate("TensorRT", precision, lambda: _tensorrt_missing(bundle_dir, precision), open_runner)

    def torch_rows(precision: str) -> list[Candidate]:
        return [
            Candidate("PyTorch (stream scheduler)", precision, _torch_missing, lambda: TorchScheduledRunner(model(), manifest(), precision, batch_size)),
            Candidate("PyTorch eager", precision, _eager_missing, lambda: TorchEagerRunner(model(), manifest(), precision, batch_size)),
        ]

    def cpp(precision: str) -> Candidate:
        from export.gpu.cpp_runner import CppRunner, cpp_build_dir, cpp_cuda_missing

        build = cpp_build or cpp_build_dir()
        opened: dict[str, CppRunner] = {}  # the check opens the handle; the row then measures that one

        def missing() -> str | None:
            if precision not in manifest().graphs:
                return f"the bundle has no {precision} graphs (glsnet-export build {bundle_dir} --{precision})"
            return cpp_cuda_missing(build, bundle_dir, precision, opened)

        def open_runner() -> CppRunner:
            return opened.pop("runner", None) or CppRunner(build, bundle_dir, precision, "cuda")

        return Candidate("glsnet-cpp --device cuda", precision, missing, open_runner)

    return [*torch_rows(TF32), *torch_rows("fp16"), ort("fp32"), ort("fp16"), tensorrt("fp16"), tensorrt("int8"), cpp("fp32"), cpp("fp16")]
