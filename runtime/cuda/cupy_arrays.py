"""CuPy views of the Device interface's memory and streams: how array code runs on a real GPU.

The stream scheduler writes its device-side work (normalisation, patch cutting, stitching, argmax)
as array code against an array module chosen at run time: numpy views of the recording fake's
memory in CPU tests, CuPy views of real device buffers here. CuPy is imported on first use only.
A view does not own its memory (``cupy.cuda.UnownedMemory``): the Device that allocated the
buffer frees it. Kernels are issued inside ``cupy.cuda.ExternalStream(handle)``, so they queue on
the scheduler's own stream; CuPy's memory pool keeps temporaries per stream, so a temporary freed
on one stream is not reused by another before that stream has run.
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Iterator

import numpy as np

from runtime.optional_import import require

FEATURE = "stitching on the GPU (device-side array code)"


def load_cupy() -> ModuleType:
    """CuPy, or MissingDependencyError naming the extra (``gpu``) that installs it."""
    return require("cupy", FEATURE)


def cupy_namespace() -> ModuleType:
    """array_api_compat's Array API wrapper of CuPy, the namespace the device-side array code is written against."""
    load_cupy()
    return require("array_api_compat.cupy", FEATURE)


def cupy_view(ptr: int, nbytes: int, owner: object, shape: tuple[int, ...], dtype: np.dtype, ordinal: int = 0) -> Any:
    """A ``cupy.ndarray`` of ``shape`` and ``dtype`` over ``nbytes`` of device memory at ``ptr``, kept alive by ``owner``."""
    cupy = load_cupy()
    memory = cupy.cuda.UnownedMemory(ptr, nbytes, owner, ordinal)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


@contextlib.contextmanager
def on_stream(handle: int, ordinal: int = 0) -> Iterator[None]:
    """CuPy's current device and stream set to ``ordinal`` and the raw ``cudaStream_t`` ``handle``."""
    cupy = load_cupy()
    with cupy.cuda.Device(ordinal), cupy.cuda.ExternalStream(handle, ordinal):
        yield
