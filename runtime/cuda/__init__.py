"""A small CUDA interface (streams, events, device and pinned memory) and its implementations.

The stream scheduler and the TensorRT backend are written against ``device.Device`` only, so the
same schedule runs on cuda-python, on pycuda (JetPack images that ship it) and, on a machine
without a GPU, on the recording fake that tests use. Nothing heavy is imported here.
"""

from __future__ import annotations

from runtime.cuda.device import Device, DeviceBuffer, DeviceInfo, DeviceTensor

__all__ = ["Device", "DeviceBuffer", "DeviceInfo", "DeviceTensor", "open_device"]

DEVICE_KINDS = ("auto", "cuda-python", "pycuda")


def open_device(kind: str = "auto", ordinal: int = 0) -> Device:
    """Open GPU ``ordinal`` through cuda-python, or pycuda; ``auto`` prefers cuda-python.

    Raises MissingDependencyError naming the extra when neither binding imports, and GlsnetError with
    the CUDA error name when a binding imports but no usable driver or GPU is there.
    """
    from runtime.errors import InputError, MissingDependencyError
    from runtime.optional_import import available

    if kind not in DEVICE_KINDS:
        raise InputError(f"CUDA binding {kind!r} is not one of {DEVICE_KINDS}")
    if kind == "pycuda" or (kind == "auto" and not available("cuda.bindings") and available("pycuda")):
        from runtime.cuda.pycuda_device import PycudaDevice

        return PycudaDevice(ordinal)
    try:
        from runtime.cuda.cuda_python import CudaPythonDevice

        return CudaPythonDevice(ordinal)
    except MissingDependencyError:
        if kind == "auto" and available("pycuda"):
            from runtime.cuda.pycuda_device import PycudaDevice

            return PycudaDevice(ordinal)
        raise
