"""The Device interface on cuda-python's runtime bindings (``cuda.bindings.runtime``), NVIDIA's current choice.

Every cudart call returns a tuple whose first item is a ``cudaError_t``; ``_check`` turns any
error into a GlsnetError that names the CUDA error (``cudaErrorInsufficientDriver``...) and the
call. TensorRT uses the runtime API's primary context, so memory and streams made here are the
ones its engines can use.
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

import numpy as np

from runtime.cuda.device import Device, DeviceBuffer, DeviceInfo
from runtime.errors import GlsnetError
from runtime.optional_import import require

FEATURE = "the CUDA-stream runtime (TensorRT engines)"


def load_cudart() -> ModuleType:
    """``cuda.bindings.runtime``; older cuda-python (11.x, 12.0-12.5) names it ``cuda.cudart``."""
    try:
        return require("cuda.bindings.runtime", FEATURE)
    except ImportError:
        return require("cuda.cudart", FEATURE)


class CudaPythonDevice(Device):
    kind = "cuda-python"
    supports_graphs = True

    def __init__(self, ordinal: int = 0, cudart: ModuleType | None = None) -> None:
        super().__init__()
        self.rt = cudart if cudart is not None else load_cudart()
        self.ordinal = ordinal
        (count,) = self._check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if ordinal >= count:
            raise GlsnetError(f"CUDA device {ordinal} was requested but this machine has {count} CUDA device(s)")
        self._check(self.rt.cudaSetDevice(ordinal), "cudaSetDevice")
        self._pinned: dict[int, int] = {}  # id(array) -> host pointer

    # -------------------------------------------------------------- error handling
    def _check(self, result: Any, call: str) -> tuple:
        """Split cudart's (error, *values) tuple; raise GlsnetError naming the CUDA error."""
        if not isinstance(result, tuple):
            result = (result,)
        error, values = result[0], result[1:]
        if error != self.rt.cudaError_t.cudaSuccess:
            raise GlsnetError(f"CUDA call {call} failed with {self._error_name(error)}; {_hint(error, self.rt)}")
        return values

    def _error_name(self, error: Any) -> str:
        try:
            status, name = self.rt.cudaGetErrorName(error)
            if status == self.rt.cudaError_t.cudaSuccess:
                return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the name is a courtesy; never hide the original error behind a second one
            pass
        return getattr(error, "name", str(error))

    def make_current(self) -> None:
        """cudaSetDevice on the calling thread: the runtime API's current device is per thread."""
        self._check(self.rt.cudaSetDevice(self.ordinal), "cudaSetDevice")

    # -------------------------------------------------------------- streams and events
    def create_stream(self, name: str = "") -> Any:
        (stream,) = self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        return stream

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def create_event(self) -> Any:
        """No timing, and blocking sync: a host waiting in cudaEventSynchronize sleeps instead of spinning on a core."""
        flags = self.rt.cudaEventDisableTiming | self.rt.cudaEventBlockingSync
        (event,) = self._check(self.rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        return event

    def destroy_event(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def record_event(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        self._check(self.rt.cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")

    def event_query(self, event: Any) -> bool:
        result = self.rt.cudaEventQuery(event)
        error = result[0] if isinstance(result, tuple) else result
        if error == self.rt.cudaError_t.cudaErrorNotReady:
            return False
        self._check(result, "cudaEventQuery")
        return True

    def event_synchronize(self, event: Any) -> None:
        self._check(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    # -------------------------------------------------------------- memory
    def _alloc_device_impl(self, nbytes: int) -> DeviceBuffer:
        (ptr,) = self._check(self.rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        return DeviceBuffer(ptr=int(ptr), nbytes=nbytes)

    def _alloc_pinned_impl(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        (ptr,) = self._check(self.rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})")
        raw = (ctypes.c_byte * nbytes).from_address(int(ptr))
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        self._pinned[id(array)] = int(ptr)
        return array

    def _free_device_impl(self, buffer: DeviceBuffer) -> None:
        self._check(self.rt.cudaFree(buffer.ptr), "cudaFree")

    def _free_pinned_impl(self, array: np.ndarray) -> None:
        ptr = self._pinned.pop(id(array), None)
        if ptr is None:
            raise GlsnetError("free of a host array that alloc_pinned of this device did not return")
        self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def _memcpy_htod_impl(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync(HtoD)")

    def _memcpy_dtoh_impl(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream), "cudaMemcpyAsync(DtoH)")

    # -------------------------------------------------------------- facts
    def info(self) -> DeviceInfo:
        (props,) = self._check(self.rt.cudaGetDeviceProperties(self.ordinal), "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return DeviceInfo(
            name=str(name).strip(),
            compute_capability=f"{props.major}.{props.minor}",
            total_memory=int(props.totalGlobalMem),
            ordinal=self.ordinal,
        )

    def memory_info(self) -> tuple[int, int]:
        free, total = self._check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    # -------------------------------------------------------------- CUDA graphs
    def begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        (graph,) = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            (executable,) = self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return executable

    def abort_capture(self, stream: Any) -> None:
        """End a failed capture as trtexec does: tolerate cudaErrorStreamCaptureInvalidated, destroy a partial graph, clear the error."""
        result = self.rt.cudaStreamEndCapture(stream)
        error, graph = result[0], (result[1] if len(result) > 1 else None)
        invalidated = getattr(self.rt.cudaError_t, "cudaErrorStreamCaptureInvalidated", None)
        if error == self.rt.cudaError_t.cudaSuccess and graph is not None and int(graph) != 0:
            self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # captured, but TensorRT said it failed
        elif error not in (self.rt.cudaError_t.cudaSuccess, invalidated):
            self.clear_error()
            raise GlsnetError(f"CUDA call cudaStreamEndCapture failed with {self._error_name(error)} while ending a failed capture")
        self.clear_error()

    def clear_error(self) -> None:
        self.rt.cudaGetLastError()  # returns and resets the thread's last error

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")


def _hint(error: Any, rt: ModuleType) -> str:
    """The fix for the errors a user can do something about."""
    codes = rt.cudaError_t
    if error in (getattr(codes, "cudaErrorInsufficientDriver", None), getattr(codes, "cudaErrorNoDevice", None)):
        return "no usable NVIDIA driver or GPU is visible: run on a machine with an NVIDIA GPU and a driver that supports this CUDA"
    if error == getattr(codes, "cudaErrorMemoryAllocation", None):
        return "the GPU is out of memory: lower --batch-size or --memory-budget, or free other GPU processes"
    return "see the CUDA runtime documentation for this error"
