"""gpu-check's CUDA-only level: the real stream scheduler drives the three graphs, run by PyTorch on its own streams.

For a GPU machine with CUDA, PyTorch and cuda-python but no TensorRT. What runs is the runtime's
GPU schedule for real: runtime.algorithm.stream_scheduler.StreamScheduler on runtime.cuda.cuda_python's
Device (non-blocking streams, events, the device-side wait for the global features, pinned
double-buffered staging, the device buffers of runtime.algorithm.device_buffers). Only the engines
are PyTorch instead of TensorRT: each ``TorchEngine`` wraps one of the model's three sub-modules
(the same ones the ONNX graphs are exported from), reads and writes the scheduler's own device
buffers through ``__cuda_array_interface__`` views, and runs on the scheduler's stream through
``torch.cuda.ExternalStream``. With CUDA graphs on, an engine captures a state (shapes and
addresses) the second time it sees it and replays it from then on: the scheduler's buffers are
fixed per image size, so a state's addresses hold what they held at capture.
Scratch memory is PyTorch's caching allocator here (TensorRT's user-managed scratch needs TensorRT).

It prints, per image: latency of the scheduled path and of PyTorch eager on CUDA (same model, same
run), peak device memory of each, and the pixel agreement of both with the CPU fp32 reference (ONNX
Runtime on the bundle) and with each other. The harness is written against a ``Launcher`` so tests
run it on the CPU with the recording device.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler
from runtime.bundle.manifest import FUSION_INPUTS, FUSION_OUTPUT, GLOBAL_INPUT, GLOBAL_OUTPUT, LOCAL_INPUT, LOCAL_OUTPUTS, Manifest
from runtime.cuda.device import Device, DeviceTensor

ROLE_IO = {
    "global": ((GLOBAL_INPUT,), (GLOBAL_OUTPUT,)),
    "local": ((LOCAL_INPUT,), tuple(LOCAL_OUTPUTS)),
    "fusion": (tuple(FUSION_INPUTS), (FUSION_OUTPUT,)),
}
MIN_AGREEMENT = 0.999  # fp32 on CUDA (TF32 off) against fp32 on the CPU
MAX_GRAPHS = 8  # captured states per engine (ring slots x batch sizes); others run uncaptured


class Launcher(Protocol):
    """Where an engine's PyTorch work runs: on a Device stream, on tensors that view the Device's buffers."""

    def view(self, tensor: DeviceTensor) -> Any: ...

    def launch(self, stream: Any, work: Callable[[], None], label: str) -> None: ...

    def capture(self, stream: Any, work: Callable[[], None], label: str) -> Callable[[], None]: ...


class CudaArrayView:
    """A DeviceTensor as CUDA Array Interface v3, so PyTorch can use the scheduler's memory without copying it."""

    def __init__(self, tensor: DeviceTensor) -> None:
        self.__cuda_array_interface__ = {
            "shape": tuple(int(s) for s in tensor.shape),
            "typestr": np.dtype(tensor.dtype).str,
            "data": (int(tensor.ptr), False),
            "strides": None,
            "stream": None,  # the consumer runs on the producer's stream: no synchronisation wanted
            "version": 3,
        }


class CudaLauncher:
    """Real CUDA: the work runs on ``torch.cuda.ExternalStream(<the scheduler's cudaStream_t>)``."""

    def __init__(self, torch: Any, device: Device, ordinal: int = 0) -> None:
        self.torch, self.device, self.ordinal = torch, device, ordinal
        self._streams: dict[int, Any] = {}

    def _stream(self, stream: Any) -> Any:
        handle = self.device.stream_handle(stream)
        if handle not in self._streams:
            self._streams[handle] = self.torch.cuda.ExternalStream(handle, device=f"cuda:{self.ordinal}")
        return self._streams[handle]

    def view(self, tensor: DeviceTensor) -> Any:
        return self.torch.as_tensor(CudaArrayView(tensor), device=f"cuda:{self.ordinal}")

    def launch(self, stream: Any, work: Callable[[], None], label: str) -> None:
        with self.torch.cuda.stream(self._stream(stream)):
            work()

    def capture(self, stream: Any, work: Callable[[], None], label: str) -> Callable[[], None]:
        graph = self.torch.cuda.CUDAGraph()
        external = self._stream(stream)
        with self.torch.cuda.graph(graph, stream=external):
            work()

        def replay() -> None:
            with self.torch.cuda.stream(external):
                graph.replay()

        return replay


class TorchArrays:
    """Device-side array code (the scheduler's normalisation, cutting and stitching) in PyTorch, on a Device's own memory.

    Mixed into a Device so that, at this level, stitching runs where the engines run without CuPy:
    ``array`` views a buffer through the ``launcher`` (``__cuda_array_interface__`` on CUDA),
    ``launch`` runs the array code on the scheduler's stream, and the namespace is array_api_compat's
    torch, the Array API the code is written against.
    """

    launcher: Launcher
    torch_device: str = "cpu"

    def array_module(self) -> Any:
        from runtime.optional_import import require

        return require("array_api_compat.torch", "device-side stitching in PyTorch")

    def array(self, tensor: DeviceTensor) -> Any:
        return self.launcher.view(tensor)

    def constant(self, array: np.ndarray) -> Any:
        import torch

        return torch.tensor(np.ascontiguousarray(array), device=self.torch_device)  # a copy: constants are small, weights read-only

    def launch(self, stream: Any, kernel: Callable[[], None], label: str) -> None:
        self.launcher.launch(stream, kernel, label)


def torch_cuda_device(torch: Any, ordinal: int = 0) -> Device:
    """cuda-python's Device with the scheduler's array code in PyTorch on the same streams and memory."""
    from runtime.cuda.cuda_python import CudaPythonDevice

    class TorchCudaDevice(TorchArrays, CudaPythonDevice):
        torch_device = f"cuda:{ordinal}"

    device = TorchCudaDevice(ordinal)
    device.launcher = CudaLauncher(torch, device, ordinal)
    return device


class TorchEngine:
    """An AsyncEngine for the stream scheduler: one model sub-module on the scheduler's stream and buffers."""

    def __init__(self, name: str, forward: Callable[..., Any], launcher: Launcher, cuda_graphs: bool = False) -> None:
        self.name = name
        self.forward = forward
        self.launcher = launcher
        self.cuda_graphs = cuda_graphs
        self.inputs, self.outputs = ROLE_IO[name]
        self._replays: dict[tuple, Callable[[], None] | None] = {}  # state -> its graph's replay (None: seen once)
        self.replays = 0
        self.capture_failed: str | None = None

    def enqueue(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: Any) -> None:
        """Run now on ``stream``; with graphs, a state (shapes, addresses, stream) seen before is captured, then replayed."""

        def work() -> None:
            self._run(inputs, outputs)

        state = tuple((n, tuple(t.shape), t.ptr) for n, t in sorted({**inputs, **outputs}.items())) + (id(stream),)
        graphs = self.cuda_graphs and self.capture_failed is None
        if not graphs or (state not in self._replays and len(self._replays) >= MAX_GRAPHS):
            self.launcher.launch(stream, work, self.name)
            return
        if state not in self._replays:
            self._replays[state] = None  # first run uncaptured (lazy set-up, cuDNN autotuning)
            self.launcher.launch(stream, work, self.name)
            return
        replay = self._replays[state]
        if replay is None:
            try:
                replay = self._replays[state] = self.launcher.capture(stream, work, self.name)
            except Exception as exc:  # noqa: BLE001 - a capture failure switches graphs off, as in the TensorRT runner
                self.capture_failed = f"{type(exc).__name__}: {exc}"
                self.launcher.launch(stream, work, self.name)
                return
        self.replays += 1
        replay()

    def _run(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor]) -> None:
        view = self.launcher.view
        results = self.forward(*(view(inputs[n]) for n in self.inputs))
        results = results if isinstance(results, (tuple, list)) else (results,)
        for name, value in zip(self.outputs, results):
            view(outputs[name]).copy_(value)


def torch_engines(model: Any, launcher: Launcher, cuda_graphs: bool) -> dict[str, TorchEngine]:
    """The three engines of a GLSNet model (global branch, local branch, fusion), without autograd."""
    import torch

    def no_grad(function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            with torch.no_grad():
                return function(*args)

        return run

    return {
        "global": TorchEngine("global", no_grad(model.global_branch), launcher, cuda_graphs=False),  # one run per image
        "local": TorchEngine("local", no_grad(model.local_branch), launcher, cuda_graphs=cuda_graphs),
        "fusion": TorchEngine("fusion", no_grad(model.fusion), launcher, cuda_graphs=cuda_graphs),
    }


@dataclass(frozen=True)
class Timed:
    mask: np.ndarray
    median_ms: float
    runs_ms: list[float]


def timed(run: Callable[[], np.ndarray], repeats: int, synchronize: Callable[[], None]) -> Timed:
    """One warm-up, then ``repeats`` timed runs (each ends when the device is idle and the mask is on the host)."""
    mask = run()
    synchronize()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        mask = run()
        synchronize()
        runs.append((time.perf_counter() - started) * 1000)
    return Timed(mask, round(statistics.median(runs), 1), [round(r, 1) for r in runs])


def scheduled_mask(
    device: Device,
    engines: Mapping[str, Any],
    manifest: Manifest,
    image: np.ndarray,
    batch_size: int,
    repeats: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> tuple[Timed, int]:
    """Segment a normalised image [C, H, W] with the real stream schedule; returns the timing and its buffers' device bytes."""
    options = StreamScheduleOptions(batch_size=batch_size)
    with StreamScheduler(device, engines, manifest, "fp32", options) as scheduler:
        result = timed(lambda: scheduler.segment(image), repeats, synchronize)
        buffers = scheduler.plan.device_bytes if scheduler.plan else 0
    return result, buffers


@dataclass(frozen=True)
class CudaMeasurement:
    image: str
    height: int
    width: int
    batch_size: int
    cuda_graphs: bool
    scheduled_ms: float
    eager_ms: float
    scheduled_peak_device_mb: float
    eager_peak_device_mb: float
    scheduled_vs_cpu: float
    eager_vs_cpu: float
    scheduled_vs_eager: float
    graph_replays: int


def measure_cuda(
    model: Any,
    manifest: Manifest,
    images: Sequence[tuple[str, np.ndarray]],
    references: Mapping[str, np.ndarray],
    batch_size: int,
    repeats: int,
    cuda_graphs: bool,
) -> list[CudaMeasurement]:
    """The CUDA-only check on this machine's GPU 0: scheduled (cuda-python + PyTorch engines) vs PyTorch eager."""
    import torch

    from glsnet.inference import predict_mask
    from runtime.accuracy.comparison import pixel_agreement
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against the CPU's fp32
    torch.backends.cudnn.allow_tf32 = False
    model = model.cuda().eval()
    device = torch_cuda_device(torch, 0)
    launcher = device.launcher
    results = []
    try:
        for name, image in images:
            engines = torch_engines(model, launcher, cuda_graphs)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            device.peak_allocated_bytes = device.allocated_bytes
            scheduled, _ = scheduled_mask(device, engines, manifest, image, batch_size, repeats, torch.cuda.synchronize)
            scheduled_peak = torch.cuda.max_memory_allocated() + device.peak_allocated_bytes
            gpu_image = torch.as_tensor(image).cuda()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            eager = timed(lambda: predict_mask(model, gpu_image, batch_size), repeats, torch.cuda.synchronize)
            eager_peak = torch.cuda.max_memory_allocated()
            reference = references[name]
            results.append(
                CudaMeasurement(
                    image=name,
                    height=int(image.shape[1]),
                    width=int(image.shape[2]),
                    batch_size=batch_size,
                    cuda_graphs=cuda_graphs,
                    scheduled_ms=scheduled.median_ms,
                    eager_ms=eager.median_ms,
                    scheduled_peak_device_mb=round(scheduled_peak / 2**20, 1),
                    eager_peak_device_mb=round(eager_peak / 2**20, 1),
                    scheduled_vs_cpu=round(pixel_agreement(reference, scheduled.mask), 5),
                    eager_vs_cpu=round(pixel_agreement(reference, eager.mask), 5),
                    scheduled_vs_eager=round(pixel_agreement(eager.mask, scheduled.mask), 5),
                    graph_replays=sum(e.replays for e in engines.values()),
                )
            )
            failed = [f"{e.name}: {e.capture_failed}" for e in engines.values() if e.capture_failed]
            if failed:
                print("gpu-check: CUDA graph capture failed, ran without graphs: " + "; ".join(failed))
    finally:
        device.close()
    return results


def cuda_level_missing() -> str | None:
    """Why the CUDA-only level cannot run here (one line), or None."""
    from runtime.optional_import import available

    if not available("torch"):
        return "PyTorch is not installed (pip install 'glsnet-deploy[train]')"
    import torch

    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU-only build, no NVIDIA driver, or no GPU)"
    if not (available("cuda.bindings") or available("cuda.cudart")):
        return "cuda-python is not installed (pip install 'glsnet-deploy[cuda]')"
    try:
        from runtime.cuda.cuda_python import CudaPythonDevice

        CudaPythonDevice(0).close()
    except Exception as exc:  # noqa: BLE001 - the reason is what the user needs, whatever the binding raised
        return f"cuda-python cannot use the GPU: {exc}"
    return None
