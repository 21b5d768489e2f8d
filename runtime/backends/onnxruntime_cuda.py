"""ONNX Runtime's CUDA execution provider as an asynchronous engine: device tensors in and out, on the scheduler's stream.

One InferenceSession per graph, created with the CUDA provider's ``user_compute_stream`` set to
the stream the stream scheduler runs that graph on (global, local or fusion), so ORT queues its
kernels there, in order with the scheduler's own work and event waits. Inputs and outputs are
bound to the scheduler's device buffers through I/O binding (``bind_input``/``bind_output`` with
``buffer_ptr``): nothing is copied to or from the host. ``run_with_iobinding`` runs with the run
option ``disable_synchronize_execution_providers``, so it returns once the work is queued instead
of synchronising the device at the end of every run. fp16 bundles bind the dtypes their graphs
declare (checked against the buffers).

When the onnxruntime installed is the CPU wheel, or onnxruntime-gpu cannot load its CUDA
libraries (it then falls back to the CPU provider with a log line), activation raises one line
that says which and what to install.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from runtime.backends.onnxruntime import ort_tensor_meta
from runtime.backends.base import TensorMeta
from runtime.cuda.device import Device, DeviceTensor, Stream
from runtime.errors import BundleError, GlsnetError, InputError, MissingDependencyError
from runtime.optional_import import require

CUDA_PROVIDER = "CUDAExecutionProvider"
NO_SYNC = "disable_synchronize_execution_providers"  # run option (ORT >= 1.16): Run returns once the work is queued


def cuda_provider_missing(ort: ModuleType) -> str | None:
    """Why this onnxruntime cannot run the CUDA provider (one line), or None when it offers it."""
    available = list(ort.get_available_providers())
    if CUDA_PROVIDER in available:
        return None
    return (
        f"onnxruntime {getattr(ort, '__version__', '?')} offers {', '.join(available)} but not {CUDA_PROVIDER}: "
        "this is the CPU wheel; install onnxruntime-gpu instead of it (pip uninstall onnxruntime; pip install 'glsnet-deploy[gpu]')"
    )


class OrtCudaEngine:
    """One graph on ONNX Runtime's CUDA provider, enqueued on a fixed CUDA stream with device tensors bound."""

    def __init__(
        self,
        model_path: str | Path,
        device: Device,
        stream: Stream,
        *,
        role: str = "",
        cudnn_conv_algo_search: str = "EXHAUSTIVE",
        ort: ModuleType | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.stream = stream
        self.role = role
        self.name = f"onnxruntime[cuda]:{role or self.model_path.name}"
        self.cudnn_conv_algo_search = cudnn_conv_algo_search
        self._ort = ort
        self.session: Any = None
        self.inputs: dict[str, TensorMeta] = {}
        self.outputs: dict[str, TensorMeta] = {}

    def provider_options(self) -> dict[str, str]:
        """The CUDA provider's options: this device and this engine's stream (ORT takes strings)."""
        return {
            "device_id": str(self.device.ordinal),
            "user_compute_stream": str(self.device.stream_handle(self.stream)),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "0",
        }

    def activate(self) -> "OrtCudaEngine":
        if self.session is not None:
            return self
        ort = self._ort or require("onnxruntime", "ONNX Runtime's CUDA provider")
        missing = cuda_provider_missing(ort)
        if missing:
            raise MissingDependencyError(missing)
        if not self.model_path.is_file():
            raise BundleError(f"{self.model_path}: graph file not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=[(CUDA_PROVIDER, self.provider_options()), "CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BundleError(f"{self.model_path}: ONNX Runtime could not load this graph on CUDA ({type(exc).__name__}: {exc})") from exc
        if CUDA_PROVIDER not in session.get_providers():
            raise MissingDependencyError(
                f"onnxruntime-gpu {getattr(ort, '__version__', '?')} could not load its CUDA libraries (CUDA runtime, cuBLAS, cuDNN of "
                "the CUDA major it was built for) and fell back to the CPU; install them (e.g. the nvidia-*-cu13 wheels, then "
                "onnxruntime.preload_dlls()) or use --provider cpu"
            )
        self.session = session
        self.inputs = {i.name: ort_tensor_meta(i) for i in session.get_inputs()}
        self.outputs = {o.name: ort_tensor_meta(o) for o in session.get_outputs()}
        self.binding = session.io_binding()
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry(NO_SYNC, "1")
        return self

    def deactivate(self) -> None:
        self.session = None
        self.binding = None

    def enqueue(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: Stream) -> None:
        """Queue one run on this engine's stream: the scheduler's device buffers bound in place, nothing waited for."""
        if self.session is None:
            raise GlsnetError(f"{self.name}: call activate() before enqueue()")
        if self.device.stream_handle(stream) != self.device.stream_handle(self.stream):
            raise InputError(
                f"{self.name}: ONNX Runtime's CUDA session runs on the stream it was created with (user_compute_stream); "
                "create one engine per stream"
            )
        self._check(inputs, self.inputs, "inputs")
        self._check(outputs, self.outputs, "outputs")
        binding, ordinal = self.binding, self.device.ordinal
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, tensor in inputs.items():
            binding.bind_input(name, "cuda", ordinal, tensor.dtype.type, list(tensor.shape), tensor.ptr)
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", ordinal, tensor.dtype.type, list(tensor.shape), tensor.ptr)
        self.session.run_with_iobinding(binding, self.run_options)

    def _check(self, given: Mapping[str, DeviceTensor], expected: Mapping[str, TensorMeta], what: str) -> None:
        if set(given) != set(expected):
            raise InputError(f"{self.name}: {what} {sorted(given)} but the graph has {sorted(expected)}")
        for name, tensor in given.items():
            if np.dtype(tensor.dtype) != expected[name].dtype:
                raise BundleError(
                    f"{self.name}: {what[:-1]} {name!r} is bound as {tensor.dtype} but the graph declares {expected[name].dtype}; "
                    "the bundle's manifest and graph disagree"
                )
