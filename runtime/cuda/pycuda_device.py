"""The Device interface on pycuda, for images (some JetPack containers) that ship pycuda and not cuda-python.

pycuda works through the driver API; TensorRT through the runtime API, which uses the device's
*primary* context. So this device retains and pushes the primary context instead of creating its
own (``pycuda.autoinit`` would make a second context whose memory TensorRT could not use safely).
pycuda raises its own exceptions; they are re-raised as GlsnetError with the call that failed.
CUDA graph capture is not offered through pycuda here.
"""

from __future__ import annotations

import threading

from types import ModuleType
from typing import Any, Callable, TypeVar

import numpy as np

from runtime.cuda.device import Device, DeviceBuffer, DeviceInfo
from runtime.errors import GlsnetError
from runtime.optional_import import require

T = TypeVar("T")

STREAM_NON_BLOCKING = 1  # CU_STREAM_NON_BLOCKING: no implicit synchronisation with the legacy default stream


class PycudaDevice(Device):
    kind = "pycuda"
    supports_graphs = False

    def __init__(self, ordinal: int = 0, driver: ModuleType | None = None) -> None:
        super().__init__()
        self.cuda = driver if driver is not None else require("pycuda.driver", "the CUDA-stream runtime through pycuda")
        self.ordinal = ordinal
        self._call(self.cuda.init, "cuInit")
        count = self._call(self.cuda.Device.count, "cuDeviceGetCount")
        if ordinal >= count:
            raise GlsnetError(f"CUDA device {ordinal} was requested but this machine has {count} CUDA device(s)")
        self.device = self._call(lambda: self.cuda.Device(ordinal), "cuDeviceGet")
        self.context = self._call(self.device.retain_primary_context, "cuDevicePrimaryCtxRetain")
        self._call(self.context.push, "cuCtxPushCurrent")
        self._threads = threading.local()  # which threads have the context on their stack
        self._threads.current = True

    def make_current(self) -> None:
        """Push the primary context on a thread that has not got it yet (a context stack is per thread)."""
        if not getattr(self._threads, "current", False):
            self._call(self.context.push, "cuCtxPushCurrent")
            self._threads.current = True

    def _call(self, function: Callable[[], T], call: str) -> T:
        try:
            return function()
        except Exception as exc:  # pycuda.driver.Error and its subclasses; the module may be a fake in tests
            raise GlsnetError(f"CUDA call {call} failed through pycuda: {exc}") from exc

    # -------------------------------------------------------------- streams and events
    def create_stream(self, name: str = "") -> Any:
        """A non-blocking stream, as the Device interface promises (pycuda's ``Stream()`` alone makes a blocking one)."""
        return self._call(lambda: self.cuda.Stream(flags=STREAM_NON_BLOCKING), "cuStreamCreate")

    def destroy_stream(self, stream: Any) -> None:
        self._call(stream.synchronize, "cuStreamSynchronize")

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def create_event(self) -> Any:
        return self._call(lambda: self.cuda.Event(self.cuda.event_flags.DISABLE_TIMING | self.cuda.event_flags.BLOCKING_SYNC), "cuEventCreate")

    def destroy_event(self, event: Any) -> None:
        """pycuda destroys events when they are garbage collected."""

    def record_event(self, event: Any, stream: Any) -> None:
        self._call(lambda: event.record(stream), "cuEventRecord")

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        self._call(lambda: stream.wait_for_event(event), "cuStreamWaitEvent")

    def event_query(self, event: Any) -> bool:
        return bool(self._call(event.query, "cuEventQuery"))

    def event_synchronize(self, event: Any) -> None:
        self._call(event.synchronize, "cuEventSynchronize")

    def synchronize(self, stream: Any) -> None:
        self._call(stream.synchronize, "cuStreamSynchronize")

    # -------------------------------------------------------------- memory
    def _alloc_device_impl(self, nbytes: int) -> DeviceBuffer:
        allocation = self._call(lambda: self.cuda.mem_alloc(nbytes), f"cuMemAlloc({nbytes})")
        return DeviceBuffer(ptr=int(allocation), nbytes=nbytes, handle=allocation)

    def _alloc_pinned_impl(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._call(lambda: self.cuda.pagelocked_empty(shape, dtype), "cuMemHostAlloc")

    def _free_device_impl(self, buffer: DeviceBuffer) -> None:
        if buffer.handle is None:
            raise GlsnetError("free of a device buffer that this pycuda device did not allocate")
        self._call(buffer.handle.free, "cuMemFree")

    def _free_pinned_impl(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            self._call(base.free, "cuMemFreeHost")

    def _memcpy_htod_impl(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        self._call(lambda: self.cuda.memcpy_htod_async(dst.ptr, src, stream), "cuMemcpyHtoDAsync")

    def _memcpy_dtoh_impl(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        self._call(lambda: self.cuda.memcpy_dtoh_async(dst, src.ptr, stream), "cuMemcpyDtoHAsync")

    # -------------------------------------------------------------- facts
    def info(self) -> DeviceInfo:
        major, minor = self.device.compute_capability()
        return DeviceInfo(
            name=str(self.device.name()).strip(),
            compute_capability=f"{major}.{minor}",
            total_memory=int(self.device.total_memory()),
            ordinal=self.ordinal,
        )

    def memory_info(self) -> tuple[int, int]:
        free, total = self._call(self.cuda.mem_get_info, "cuMemGetInfo")
        return int(free), int(total)

    def close(self) -> None:
        self._call(self.context.pop, "cuCtxPopCurrent")
        self._call(self.context.detach, "cuDevicePrimaryCtxRelease")
