"""ONNX Runtime backend: one InferenceSession per graph, on the CPU or through ORT's CUDA/TensorRT providers.

The session is created on ``activate``, not in the constructor. ``InferenceSession.run`` is
thread-safe, so one activated backend may serve several threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.backends.base import Backend, TensorMeta
from runtime.backends.shared_arena import SHARED_ARENA_ENTRIES, register_shared_arena
from runtime.errors import BundleError, InputError, MissingDependencyError
from runtime.optional_import import require

DEVICES = ("cpu", "cuda", "tensorrt")
# Common-subexpression elimination merges the dedicated Q/DQ pairs of an int8 graph (one Q with two
# DQs), and on x86 that keeps ONNX Runtime from turning them into integer kernels (QLinearConv): off.
QDQ_BLOCKING_OPTIMIZERS = ("CommonSubexpressionElimination",)
# ONNX Runtime's session config keys that let its intra-op and inter-op pool threads busy-wait for work.
SPINNING_ENTRIES = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")

# Peak working memory of a graph in ONNX Runtime 1.32 on the CPU, as a multiple of the bytes of its
# inputs plus outputs. Measured on the GLSNet graphs (peak RSS of one run minus RSS after loading):
# global ResNet18 6-8x, local ResNet50 5.2x, fusion 9x. The memory budget uses the estimate; the
# bench measures the truth.
DEFAULT_ACTIVATION_FACTOR = 10.0
# A loaded session holds about this multiple of the graph file (initializers, prepacked convolution
# weights): measured 2.8x for the ResNet graphs while glibc kept the load-time copies, 1.25x (the
# interpreter's own ~35 MB included) once the Segmenter hands them back (runtime.process_memory.heap_release).
RESIDENT_WEIGHT_FACTOR = 1.3

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class OrtOptions:
    """How to run a session: device (ORT execution provider), threads, fp16 for TensorRT, caches."""

    device: str = "cpu"
    threads: int | None = None  # intra-op threads; None lets ONNX Runtime choose (one per core)
    # ORT's pool threads spin on the CPU between tasks (its default, quickest alone on a machine); off
    # they sleep, so processes sharing a node's cores (batch workers) do not burn each other's time.
    spinning: bool = True
    fp16: bool = False  # TensorRT EP only: allow fp16 kernels
    tensorrt_cache_dir: Path | None = None  # TensorRT EP engine cache (inside the bundle)
    # ORT's CPU arena keeps every block it ever allocated (the whole-image global graph's included)
    # and grows in power-of-two steps; without it freed activations go back to the system. Measured
    # on the default config at 2448 x 2448: peak RSS 2.12 GB with the arena, 1.25 GB without, same speed.
    cpu_arena: bool = False
    # On the CPU: allocate from the process's shared arena, which keeps every run's pages for the next
    # (runtime.backends.shared_arena); they stay resident until the process ends.
    shared_arena: bool = False
    activation_factor: float = DEFAULT_ACTIVATION_FACTOR

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InputError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")


def providers_for(options: OrtOptions, available: list[str]) -> list:
    """ONNX Runtime provider list for ``options.device``; a clear error when the provider is absent."""
    if options.device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = "CUDAExecutionProvider" if options.device == "cuda" else "TensorrtExecutionProvider"
    if wanted not in available:
        raise MissingDependencyError(
            f"--device {options.device} needs ONNX Runtime's {wanted}, but this onnxruntime offers only "
            f"{', '.join(available)}. Install onnxruntime-gpu (pip install 'glsnet-deploy[gpu]', never beside "
            "onnxruntime) with matching CUDA/TensorRT libraries, or use --device cpu"
        )
    cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    if options.device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt: dict[str, object] = {"trt_fp16_enable": options.fp16, "trt_timing_cache_enable": True}
    if options.tensorrt_cache_dir is not None:
        options.tensorrt_cache_dir.mkdir(parents=True, exist_ok=True)
        trt.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(options.tensorrt_cache_dir),
            trt_timing_cache_path=str(options.tensorrt_cache_dir),
        )
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """Runs one ONNX graph with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, options: OrtOptions | None = None) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.options = options or OrtOptions()
        self.name = f"onnxruntime[{self.options.device}]:{self.model_path.name}"
        self.session = None
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: dict[str, TensorMeta] = {}

    # -------------------------------------------------------------- hooks
    def _activate_impl(self) -> None:
        ort = require("onnxruntime", "the ONNX Runtime backend")
        if not self.model_path.is_file():
            raise BundleError(f"{self.model_path}: graph file not found")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_cpu_mem_arena = self.options.cpu_arena
        if self.options.shared_arena and self.options.device == "cpu" and register_shared_arena(ort):
            for key, value in SHARED_ARENA_ENTRIES.items():
                so.add_session_config_entry(key, value)
            so.enable_cpu_mem_arena = True
            so.enable_mem_pattern = False
        so.log_severity_level = 3
        if self.options.threads is not None:
            so.intra_op_num_threads = self.options.threads
            so.inter_op_num_threads = 1
        if not self.options.spinning:
            for entry in SPINNING_ENTRIES:
                so.add_session_config_entry(entry, "0")
        providers = providers_for(self.options, ort.get_available_providers())
        model = self._model()
        try:
            self.session = ort.InferenceSession(
                model, sess_options=so, providers=providers, disabled_optimizers=list(QDQ_BLOCKING_OPTIMIZERS)
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BundleError(
                f"{self.model_path}: ONNX Runtime could not load this graph ({type(exc).__name__}: {exc}); "
                "re-export the bundle with glsnet-export"
            ) from exc
        self._inputs = {i.name: ort_tensor_meta(i) for i in self.session.get_inputs()}
        self._outputs = {o.name: ort_tensor_meta(o) for o in self.session.get_outputs()}

    def _model(self) -> str | bytes:
        """What the session loads: the graph file's path, or a serialized model."""
        return str(self.model_path)

    def _deactivate_impl(self) -> None:
        self.session = None

    def _input_metadata_impl(self) -> dict[str, TensorMeta]:
        return self._inputs

    def _output_metadata_impl(self) -> dict[str, TensorMeta]:
        return self._outputs

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self._outputs)
        values = self.session.run(names, {k: np.ascontiguousarray(v) for k, v in feed.items()})
        return dict(zip(names, values))

    # -------------------------------------------------------------- memory
    @property
    def weight_bytes(self) -> int:
        """Bytes a loaded session holds for its weights (RESIDENT_WEIGHT_FACTOR x the graph file)."""
        return int(self.model_path.stat().st_size * RESIDENT_WEIGHT_FACTOR)

    def memory_estimate(self, input_shapes: Mapping[str, tuple[int, ...]], output_shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Working memory of one run with these concrete shapes, excluding weights (an estimate).

        activation_factor x (input bytes + output bytes): see DEFAULT_ACTIVATION_FACTOR.
        """
        total = sum(math.prod(s) * 4 for s in input_shapes.values()) + sum(math.prod(s) * 4 for s in output_shapes.values())
        return int(total * self.options.activation_factor)


def ort_tensor_meta(arg) -> TensorMeta:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise BundleError(f"graph tensor {arg.name!r} has type {arg.type}, which this runtime does not feed")
    shape = tuple(d if isinstance(d, int) else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorMeta(arg.name, np.dtype(dtype), shape)
