"""The cuda-python and pycuda adapters against fake binding modules, and the real cuda-python without a driver."""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
import pytest

from runtime.cuda import open_device
from runtime.cuda.cuda_python import CudaPythonDevice
from runtime.cuda.pycuda_device import PycudaDevice
from runtime.errors import GlsnetError
from runtime.optional_import import available


class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorInsufficientDriver = 35
    cudaErrorNotReady = 600


class Kind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class Capture(enum.IntEnum):
    cudaStreamCaptureModeThreadLocal = 1


def fake_cudart(fail: dict[str, Err] | None = None):
    """A cudart with the documented call shapes: every call returns (cudaError_t, *values) and is logged."""
    fail = fail or {}
    rt = types.SimpleNamespace(cudaError_t=Err, cudaMemcpyKind=Kind, cudaStreamCaptureMode=Capture)
    rt.cudaStreamNonBlocking, rt.cudaEventDisableTiming, rt.cudaEventBlockingSync = 1, 2, 1
    rt.log = []
    rt.host = {}

    def call(name, *values):
        def function(*args):
            rt.log.append((name, *args))
            if name in fail:
                return (fail[name],) + (None,) * len(values)
            result = values[0](*args) if values and callable(values[0]) else values
            return (Err.cudaSuccess, *(result if isinstance(result, tuple) else (result,)))

        return function

    def malloc_host(size):
        buffer = (ctypes.c_byte * size)()
        rt.host[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)

    props = types.SimpleNamespace(name=b"NVIDIA Jetson Orin NX\0\0garbage", major=8, minor=7, totalGlobalMem=8 << 30)
    for name, *values in [
        ("cudaGetDeviceCount", 1),
        ("cudaSetDevice",),
        ("cudaStreamCreateWithFlags", 0xA1),
        ("cudaStreamDestroy",),
        ("cudaEventCreateWithFlags", 0xE1),
        ("cudaEventDestroy",),
        ("cudaEventRecord",),
        ("cudaStreamWaitEvent",),
        ("cudaEventSynchronize",),
        ("cudaStreamSynchronize",),
        ("cudaMalloc", 0xD000),
        ("cudaMallocHost", malloc_host),
        ("cudaFree",),
        ("cudaFreeHost",),
        ("cudaMemcpyAsync",),
        ("cudaGetDeviceProperties", props),
        ("cudaMemGetInfo", lambda: (6 << 30, 8 << 30)),
        ("cudaStreamBeginCapture",),
        ("cudaStreamEndCapture", 0x6A),
        ("cudaGraphInstantiate", 0x6E),
        ("cudaGraphLaunch",),
        ("cudaGraphDestroy",),
        ("cudaGraphExecDestroy",),
        ("cudaGetLastError",),
    ]:
        setattr(rt, name, call(name, *values))
    rt.cudaGetErrorName = lambda error: (Err.cudaSuccess, error.name.encode())
    rt.cudaEventQuery = lambda event: (rt.query_result,)
    rt.query_result = Err.cudaErrorNotReady
    return rt


def test_cuda_python_calls_cudart_with_the_documented_arguments():
    rt = fake_cudart()
    device = CudaPythonDevice(0, cudart=rt)
    stream, event = device.create_stream("x"), device.create_event()
    # events without timing that block the host thread in cudaEventSynchronize instead of spinning on a core
    assert ("cudaStreamCreateWithFlags", 1) in rt.log and ("cudaEventCreateWithFlags", 2 | 1) in rt.log
    device.record_event(event, stream)
    device.stream_wait_event(stream, event)
    assert ("cudaEventRecord", 0xE1, 0xA1) in rt.log and ("cudaStreamWaitEvent", 0xA1, 0xE1, 0) in rt.log
    assert device.stream_handle(stream) == 0xA1

    pinned = device.alloc_pinned((2, 3), np.float32)
    pinned[...] = 7.0  # really host memory at the pointer cudaMallocHost returned
    assert pinned.ctypes.data in rt.host
    buffer = device.alloc_device(24)
    device.memcpy_htod_async(buffer, pinned, stream)
    device.memcpy_dtoh_async(pinned, buffer, stream)
    assert ("cudaMemcpyAsync", 0xD000, pinned.ctypes.data, 24, Kind.cudaMemcpyHostToDevice, 0xA1) in rt.log
    assert ("cudaMemcpyAsync", pinned.ctypes.data, 0xD000, 24, Kind.cudaMemcpyDeviceToHost, 0xA1) in rt.log
    device.free(pinned)
    device.free(buffer)
    assert ("cudaFreeHost", list(rt.host)[0]) in rt.log and ("cudaFree", 0xD000) in rt.log
    assert device.allocated_bytes == 0 and device.peak_allocated_bytes == 24

    assert device.event_query(event) is False
    rt.query_result = Err.cudaSuccess
    assert device.event_query(event) is True
    info = device.info()
    assert (info.name, info.compute_capability, info.total_memory) == ("NVIDIA Jetson Orin NX", "8.7", 8 << 30)
    assert device.memory_info() == (6 << 30, 8 << 30)


def test_cuda_python_graph_capture_instantiates_and_frees_the_template():
    rt = fake_cudart()
    device = CudaPythonDevice(0, cudart=rt)
    stream = device.create_stream()
    device.begin_capture(stream)
    graph = device.end_capture(stream)
    device.launch_graph(graph, stream)
    device.destroy_graph(graph)
    names = [entry[0] for entry in rt.log]
    assert names[-6:] == ["cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphDestroy", "cudaGraphLaunch", "cudaGraphExecDestroy"]
    assert ("cudaGraphInstantiate", 0x6A, 0) in rt.log and ("cudaGraphLaunch", 0x6E, stream) in rt.log


def test_cuda_errors_are_raised_with_the_cuda_error_name_and_a_fix():
    rt = fake_cudart(fail={"cudaMalloc": Err.cudaErrorMemoryAllocation})
    device = CudaPythonDevice(0, cudart=rt)
    with pytest.raises(GlsnetError, match=r"cudaMalloc\(4096\) failed with cudaErrorMemoryAllocation.*out of memory"):
        device.alloc_device(4096)
    assert device.allocated_bytes == 0
    with pytest.raises(GlsnetError, match="cudaErrorInsufficientDriver.*NVIDIA driver"):
        CudaPythonDevice(0, cudart=fake_cudart(fail={"cudaGetDeviceCount": Err.cudaErrorInsufficientDriver}))
    with pytest.raises(GlsnetError, match="device 3 was requested but this machine has 1"):
        CudaPythonDevice(3, cudart=fake_cudart())


@pytest.mark.skipif(not available("cuda.bindings.runtime"), reason="cuda-python (cuda.bindings) is not installed")
def test_the_real_cuda_python_opens_a_gpu_or_says_clearly_why_not():
    try:
        device = open_device("cuda-python")
    except GlsnetError as exc:
        assert "cudaError" in str(exc)  # e.g. cudaErrorInsufficientDriver / cudaErrorNoDevice here
        return
    stream = device.create_stream()  # a machine with a GPU: a real round trip
    host = device.alloc_pinned((256,), np.float32)
    host[:] = np.arange(256)
    buffer = device.alloc_device(host.nbytes)
    device.memcpy_htod_async(buffer, host, stream)
    back = device.alloc_pinned((256,), np.float32)
    device.memcpy_dtoh_async(back, buffer, stream)
    device.synchronize(stream)
    np.testing.assert_array_equal(back, np.arange(256))


def fake_pycuda():
    log = []

    class Stream:
        handle = 0xB1

        def __init__(self, flags=0):
            log.append(("Stream", flags))

        def synchronize(self):
            log.append("stream.synchronize")

        def wait_for_event(self, event):
            log.append(("wait_for_event", event))

    class Event:
        def __init__(self, flags):
            log.append(("Event", flags))

        def record(self, stream):
            log.append(("record", stream))

        def query(self):
            return True

        def synchronize(self):
            log.append("event.synchronize")

    class Context:
        def push(self):
            log.append("push")

        def pop(self):
            log.append("pop")

        def detach(self):
            log.append("detach")

    class Device:
        @staticmethod
        def count():
            return 1

        def __init__(self, ordinal):
            self.ordinal = ordinal

        def retain_primary_context(self):
            log.append("retain_primary_context")
            return Context()

        def name(self):
            return "Orin"

        def compute_capability(self):
            return (8, 7)

        def total_memory(self):
            return 8 << 30

    class Allocation(int):
        def free(self):
            log.append(("free", int(self)))

    def init():
        log.append("init")

    cuda = types.SimpleNamespace(
        init=init, Device=Device, Stream=Stream, Event=Event, event_flags=types.SimpleNamespace(DISABLE_TIMING=2, BLOCKING_SYNC=1),
        mem_alloc=lambda n: Allocation(0xD100), pagelocked_empty=lambda shape, dtype: np.zeros(shape, dtype),
        memcpy_htod_async=lambda dst, src, stream: log.append(("htod", dst, src.nbytes)),
        memcpy_dtoh_async=lambda dst, src, stream: log.append(("dtoh", src, dst.nbytes)),
        mem_get_info=lambda: (1, 2), log=log,
    )
    return cuda


def test_pycuda_uses_the_primary_context_and_the_same_interface():
    cuda = fake_pycuda()
    device = PycudaDevice(0, driver=cuda)
    assert cuda.log[:2] == ["init", "retain_primary_context"] and "push" in cuda.log
    stream, event = device.create_stream(), device.create_event()
    assert device.stream_handle(stream) == 0xB1
    device.record_event(event, stream)
    device.stream_wait_event(stream, event)
    host = device.alloc_pinned((4,), np.float32)
    buffer = device.alloc_device(16)
    device.memcpy_htod_async(buffer, host, stream)
    device.memcpy_dtoh_async(host, buffer, stream)
    assert ("htod", 0xD100, 16) in cuda.log and ("dtoh", 0xD100, 16) in cuda.log
    device.free(buffer)
    assert ("free", 0xD100) in cuda.log
    assert device.info().compute_capability == "8.7"
    with pytest.raises(GlsnetError, match="does not capture CUDA graphs"):
        device.begin_capture(stream)
    device.close()
    assert cuda.log[-2:] == ["pop", "detach"]


def test_pycuda_errors_become_glsnet_errors():
    cuda = fake_pycuda()

    def refuse():
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    cuda.init = refuse
    with pytest.raises(GlsnetError, match="cuInit failed through pycuda: cuInit failed"):
        PycudaDevice(0, driver=cuda)


def test_pycuda_streams_are_non_blocking():
    """Defect 6: pycuda's Stream() is blocking (flags 0); the Device interface promises non-blocking streams."""
    cuda = fake_pycuda()
    device = PycudaDevice(0, driver=cuda)
    device.create_stream("local")
    assert ("Stream", 1) in cuda.log and ("Stream", 0) not in cuda.log  # CU_STREAM_NON_BLOCKING


@pytest.mark.parametrize("status, graph, destroyed", [(Err.cudaErrorStreamCaptureInvalidated, None, False), (Err.cudaSuccess, 0x6A, True)])
def test_cuda_python_ends_a_failed_capture_like_trtexec(status, graph, destroyed):
    """Defect 2 on cuda-python: invalidated capture tolerated; a graph TensorRT failed in is destroyed; the error cleared."""
    rt = fake_cudart()
    rt.cudaStreamEndCapture = lambda stream: (rt.log.append(("cudaStreamEndCapture", stream)), (status, graph))[1]
    device = CudaPythonDevice(0, cudart=rt)
    stream = device.create_stream()
    device.begin_capture(stream)
    device.abort_capture(stream)
    names = [entry[0] for entry in rt.log]
    assert names[-3 if destroyed else -2 :] == (["cudaStreamEndCapture", "cudaGraphDestroy", "cudaGetLastError"] if destroyed else ["cudaStreamEndCapture", "cudaGetLastError"])


def test_pycuda_events_block_instead_of_spinning():
    cuda = fake_pycuda()
    PycudaDevice(0, driver=cuda).create_event()
    assert ("Event", 2 | 1) in cuda.log


def test_the_device_is_made_current_on_every_thread_that_uses_it():
    """CUDA's current device (and pycuda's context stack) is per thread; the Segmenter is shared between threads."""
    import threading

    rt = fake_cudart()
    device = CudaPythonDevice(0, cudart=rt)
    cuda = fake_pycuda()
    pycuda_device = PycudaDevice(0, driver=cuda)
    rt.log.clear()
    pushes = cuda.log.count("push")

    def work():
        device.make_current()
        pycuda_device.make_current()
        pycuda_device.make_current()  # once per thread is enough

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert rt.log == [("cudaSetDevice", 0)]
    assert cuda.log.count("push") == pushes + 1
    pycuda_device.make_current()  # the opening thread already has the context current
    assert cuda.log.count("push") == pushes + 1
