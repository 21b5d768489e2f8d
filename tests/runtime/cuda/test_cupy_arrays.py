"""CuPy views of device buffers and CuPy's stream context, checked against a fake cupy with CuPy's documented signatures."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from runtime.cuda import cupy_arrays
from runtime.cuda.device import DeviceBuffer, DeviceTensor
from runtime.errors import MissingDependencyError


def fake_cupy(log):
    class UnownedMemory:
        def __init__(self, ptr, size, owner, device_id=-1):
            log.append(("UnownedMemory", ptr, size, device_id))
            self.owner = owner

    class MemoryPointer:
        def __init__(self, memory, offset):
            log.append(("MemoryPointer", offset))
            self.memory = memory

    class ndarray:
        def __init__(self, shape, dtype=float, memptr=None):
            log.append(("ndarray", tuple(shape), np.dtype(dtype).str))
            self.memptr = memptr

    class Context:
        def __init__(self, what, *args):
            self.what, self.args = what, args

        def __enter__(self):
            log.append(("enter", self.what, *self.args))

        def __exit__(self, *exc):
            log.append(("exit", self.what))

    cuda = types.SimpleNamespace(
        UnownedMemory=UnownedMemory,
        MemoryPointer=MemoryPointer,
        Device=lambda ordinal: Context("Device", ordinal),
        ExternalStream=lambda handle, device_id: Context("ExternalStream", handle, device_id),
    )
    return types.SimpleNamespace(cuda=cuda, ndarray=ndarray)


def test_a_view_wraps_the_device_pointer_without_owning_it_and_kernels_queue_on_the_given_stream(monkeypatch):
    log = []
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(log))
    buffer = DeviceBuffer(ptr=0xD000, nbytes=4096)
    tensor = DeviceTensor(buffer, (2, 3, 4), np.float16)
    view = cupy_arrays.cupy_view(tensor.ptr, buffer.nbytes, buffer, tensor.shape, tensor.dtype, 1)
    assert log[:3] == [("UnownedMemory", 0xD000, 4096, 1), ("MemoryPointer", 0), ("ndarray", (2, 3, 4), "<f2")]
    assert view.memptr.memory.owner is buffer  # the buffer stays alive as long as the view
    log.clear()
    with cupy_arrays.on_stream(0xA1, 1):
        log.append("kernel")
    assert log == [("enter", "Device", 1), ("enter", "ExternalStream", 0xA1, 1), "kernel", ("exit", "ExternalStream"), ("exit", "Device")]


def test_without_cupy_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(MissingDependencyError, match=r"glsnet-deploy\[tensorrt\]"):
        cupy_arrays.load_cupy()
