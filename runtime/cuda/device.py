"""The CUDA operations the GPU schedule needs, and nothing more.

Streams and events are opaque handles that only the Device that made them understands. Device
memory is a ``DeviceBuffer`` (a pointer and a size); host staging memory is a pinned numpy array,
so the host fills it like any array and the copy engines read it without an extra copy. The public
methods check what can be checked on the host (sizes, contiguity) and then call the ``_impl`` hooks
each binding implements.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from runtime.errors import GlsnetError, InputError

Stream = Any  # a binding's stream handle
Event = Any  # a binding's event handle
Graph = Any  # a binding's executable CUDA graph


@dataclass(frozen=True)
class DeviceInfo:
    """What engine compatibility is judged on: the GPU's name and compute capability ("8.7")."""

    name: str
    compute_capability: str
    total_memory: int
    ordinal: int = 0


@dataclass(eq=False)
class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr``; ``handle`` keeps the binding's allocation object alive."""

    ptr: int
    nbytes: int
    handle: Any = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class DeviceTensor:
    """A typed, shaped view of (the start of) a device buffer, as engines read and write it."""

    buffer: DeviceBuffer
    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.nbytes > self.buffer.nbytes:
            raise InputError(
                f"a tensor of shape {self.shape} {self.dtype} needs {self.nbytes} bytes but its device buffer "
                f"holds {self.buffer.nbytes}; allocate the buffer for the largest batch"
            )

    @property
    def ptr(self) -> int:
        return self.buffer.ptr

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * self.dtype.itemsize


class Device(abc.ABC):
    """One GPU seen through one CUDA binding."""

    kind = "device"
    supports_graphs = False

    def __init__(self) -> None:
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0

    # -------------------------------------------------------------- streams and events
    @abc.abstractmethod
    def create_stream(self, name: str = "") -> Stream:
        """A non-blocking stream; ``name`` labels it in logs and in the recording fake."""

    @abc.abstractmethod
    def destroy_stream(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def stream_handle(self, stream: Stream) -> int:
        """The raw ``cudaStream_t`` as an int, which TensorRT's ``execute_async_v3`` takes."""

    @abc.abstractmethod
    def create_event(self) -> Event:
        """An event without timing, which is the cheapest kind to record and wait on."""

    @abc.abstractmethod
    def destroy_event(self, event: Event) -> None: ...

    @abc.abstractmethod
    def record_event(self, event: Event, stream: Stream) -> None: ...

    @abc.abstractmethod
    def stream_wait_event(self, stream: Stream, event: Event) -> None:
        """Make later work on ``stream`` wait for ``event`` on the device; the host does not block."""

    @abc.abstractmethod
    def event_query(self, event: Event) -> bool:
        """True once the work before the event's last record has finished; never blocks."""

    @abc.abstractmethod
    def event_synchronize(self, event: Event) -> None:
        """Block the host until the event has fired."""

    @abc.abstractmethod
    def synchronize(self, stream: Stream) -> None:
        """Block the host until all work queued on ``stream`` has finished."""

    # -------------------------------------------------------------- memory
    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        if nbytes <= 0:
            raise InputError(f"device allocation of {nbytes} bytes: the size must be positive")
        buffer = self._alloc_device_impl(int(nbytes))
        self.allocated_bytes += buffer.nbytes
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return buffer

    def alloc_pinned(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """A page-locked host array: the source and destination of asynchronous copies."""
        dtype = np.dtype(dtype)
        if int(math.prod(shape)) * dtype.itemsize <= 0:
            raise InputError(f"pinned allocation of shape {shape} {dtype}: the size must be positive")
        return self._alloc_pinned_impl(tuple(int(s) for s in shape), dtype)

    def free(self, memory: DeviceBuffer | np.ndarray) -> None:
        """Release a device buffer or a pinned array made by this device."""
        if isinstance(memory, DeviceBuffer):
            self._free_device_impl(memory)
            self.allocated_bytes -= memory.nbytes
        else:
            self._free_pinned_impl(memory)

    def memcpy_htod_async(self, dst: DeviceBuffer | DeviceTensor, src: np.ndarray, stream: Stream) -> None:
        """Queue a copy of the whole of ``src`` (pinned, contiguous) to the start of ``dst``."""
        self._check_copy(dst, src, "host-to-device")
        self._memcpy_htod_impl(_buffer_of(dst), src, stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer | DeviceTensor, stream: Stream) -> None:
        """Queue a copy of ``dst.nbytes`` bytes from the start of ``src`` into ``dst`` (pinned, contiguous)."""
        self._check_copy(src, dst, "device-to-host")
        self._memcpy_dtoh_impl(dst, _buffer_of(src), stream)

    @staticmethod
    def _check_copy(device: DeviceBuffer | DeviceTensor, host: np.ndarray, what: str) -> None:
        if not isinstance(host, np.ndarray) or not host.flags.c_contiguous:
            raise InputError(f"{what} copy: the host array must be a C-contiguous numpy array (use alloc_pinned)")
        if host.nbytes > device.nbytes:
            raise InputError(
                f"{what} copy of {host.nbytes} bytes does not fit a device region of {device.nbytes} bytes"
            )

    # -------------------------------------------------------------- array code on the device
    def array_module(self) -> ModuleType:
        """The Array API namespace of this device's arrays: array_api_compat's CuPy on a GPU (imported on first use)."""
        from runtime.cuda.cupy_arrays import cupy_namespace

        return cupy_namespace()

    def constant(self, array: np.ndarray) -> Any:
        """A small host array uploaded once, as an array of ``array_module()`` (weights, taps, a palette)."""
        return self.array_module().asarray(array)

    def array(self, tensor: DeviceTensor) -> Any:
        """An array of ``array_module()`` viewing ``tensor``'s device memory (no copy)."""
        from runtime.cuda.cupy_arrays import cupy_view

        return cupy_view(tensor.ptr, tensor.buffer.nbytes, tensor.buffer, tensor.shape, tensor.dtype, self.ordinal)

    def launch(self, stream: Stream, kernel: Callable[[], None], label: str) -> None:
        """Queue ``kernel``, array code on ``array()`` views, on ``stream``; returns before it has run on the GPU.

        On a GPU the kernel's array operations are issued at once, inside CuPy's stream context for
        ``stream``, so they run in stream order after the work already queued there.
        """
        from runtime.cuda.cupy_arrays import on_stream

        with on_stream(self.stream_handle(stream), self.ordinal):
            kernel()

    @property
    def ordinal(self) -> int:
        return getattr(self, "_ordinal", 0)

    @ordinal.setter
    def ordinal(self, value: int) -> None:
        self._ordinal = int(value)

    def make_current(self) -> None:
        """Make this device current on the calling thread (CUDA's current device is per thread)."""

    # -------------------------------------------------------------- device facts
    @abc.abstractmethod
    def info(self) -> DeviceInfo: ...

    @abc.abstractmethod
    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, for the whole process and everyone else on the GPU."""

    # -------------------------------------------------------------- CUDA graphs (optional)
    def begin_capture(self, stream: Stream) -> None:
        raise GlsnetError(f"the {self.kind} CUDA binding does not capture CUDA graphs; run without graph capture")

    def end_capture(self, stream: Stream) -> Graph:
        raise GlsnetError(f"the {self.kind} CUDA binding does not capture CUDA graphs; run without graph capture")

    def abort_capture(self, stream: Stream) -> None:
        """End a capture whose work failed: tolerate an invalidated capture, destroy any partial graph, clear the error."""
        raise GlsnetError(f"the {self.kind} CUDA binding does not capture CUDA graphs; run without graph capture")

    def clear_error(self) -> None:
        """Reset the thread's last CUDA error (cudaGetLastError) after a failure that was handled."""

    def launch_graph(self, graph: Graph, stream: Stream) -> None:
        raise GlsnetError(f"the {self.kind} CUDA binding does not capture CUDA graphs; run without graph capture")

    def destroy_graph(self, graph: Graph) -> None:
        raise GlsnetError(f"the {self.kind} CUDA binding does not capture CUDA graphs; run without graph capture")

    def close(self) -> None:
        """Release what the binding holds for this device (contexts); buffers must be freed first."""

    # -------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _alloc_device_impl(self, nbytes: int) -> DeviceBuffer: ...

    @abc.abstractmethod
    def _alloc_pinned_impl(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...

    @abc.abstractmethod
    def _free_device_impl(self, buffer: DeviceBuffer) -> None: ...

    @abc.abstractmethod
    def _free_pinned_impl(self, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _memcpy_htod_impl(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None: ...

    @abc.abstractmethod
    def _memcpy_dtoh_impl(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None: ...


def _buffer_of(target: DeviceBuffer | DeviceTensor) -> DeviceBuffer:
    return target.buffer if isinstance(target, DeviceTensor) else target
