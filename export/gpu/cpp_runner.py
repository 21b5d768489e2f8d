"""glsnet-cpp's library (``libglsnet.so``, runtime/cpp) as a gpu-check row, through its C ABI (glsnet.h).

The row is what a C++ service on a GPU runs today: the C++ runtime with ONNX Runtime's CUDA provider
(``glsnet-cpp run --device cuda``). It is called in-process through ctypes, so the timings are those of
``glsnet_segment`` on an open handle (sessions created once, as a service does), not of process start-up.
The handle is thread-safe (glsnet.h), so the table's two images in flight call it from two threads.

It runs only where ``make cpp`` built the library against an ONNX Runtime with the CUDA provider (the
venv's onnxruntime-gpu, or GLSNET_ONNXRUNTIME_ROOT); otherwise ``glsnet_open`` refuses the device in one
line, which becomes the row's reason.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from runtime.errors import GlsnetError

DEFAULT_BUILD = Path(__file__).resolve().parents[2] / "build" / "cpp"  # where `make cpp` builds
LIBRARY = "libglsnet.so"


class GlsnetOptions(ctypes.Structure):
    """glsnet_options (glsnet.h) up to device_id, all the check sets; the library takes this shorter struct as an
    older caller's (struct_size) and gives the later fields (bands, logging, min_overlap) their defaults."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("precision", ctypes.c_char_p),
        ("device", ctypes.c_char_p),
        ("threads", ctypes.c_int32),
        ("batch_size", ctypes.c_int32),
        ("max_memory", ctypes.c_uint64),
        ("global_band_rows", ctypes.c_int32),
        ("global_halo", ctypes.c_int32),
        ("cpu_arena", ctypes.c_int32),
        ("max_pixels", ctypes.c_int64),
        ("release_heap", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
    ]


def cpp_build_dir() -> Path:
    """The C++ build folder: $GLSNET_CPP_BUILD, else the repository's build/cpp."""
    return Path(os.environ.get("GLSNET_CPP_BUILD", DEFAULT_BUILD))


def load_library(build: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build / LIBRARY))
    lib.glsnet_last_error.restype = ctypes.c_char_p
    lib.glsnet_options_init_sized.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.glsnet_segment.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t,
    ]
    lib.glsnet_close.argtypes = [ctypes.c_void_p]
    return lib


class CppRunner:
    """A gpu-check Runner on one glsnet handle opened with ``device`` and ``precision``."""

    def __init__(self, build: Path, bundle_dir: Path, precision: str, device: str = "cuda", batch_size: int = 0) -> None:
        self.lib = load_library(build)
        options = GlsnetOptions()
        self.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
        self._strings = (precision.encode(), device.encode())  # kept alive while the handle is opened
        options.precision, options.device = self._strings
        options.batch_size = batch_size
        handle = ctypes.c_void_p()
        status = self.lib.glsnet_open(str(bundle_dir).encode(), ctypes.byref(options), ctypes.byref(handle))
        if status != 0:
            raise GlsnetError(f"glsnet_open --device {device} --precision {precision}: {self._last_error()}")
        self.handle = handle

    def _last_error(self) -> str:
        message = self.lib.glsnet_last_error()
        return (message or b"").decode(errors="replace").splitlines()[0] if message else "no message"

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels if pixels.ndim == 3 else pixels[:, :, None], dtype=np.uint8)
        mask = np.zeros(pixels.shape[:2], dtype=np.uint8)
        status = self.lib.glsnet_segment(
            self.handle, pixels.ctypes.data, pixels.nbytes, pixels.shape[0], pixels.shape[1], pixels.shape[2], mask.ctypes.data, mask.nbytes
        )
        if status != 0:
            raise GlsnetError(f"glsnet_segment: {self._last_error()}")
        return mask

    def synchronize(self) -> None:
        """Nothing to wait for: glsnet_segment returns with the whole mask on the host."""

    def reset_peak(self) -> None:
        """The C ABI reports no allocator peak; NVML's whole-process peak covers this row."""

    def peak_allocator_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        if self.handle:
            self.lib.glsnet_close(self.handle)
            self.handle = ctypes.c_void_p()


def cpp_cuda_missing(build: Path, bundle_dir: Path, precision: str, opened: dict) -> str | None:
    """Why the C++ CUDA row cannot run, in one line; None when it can (the opened runner is kept in ``opened``)."""
    if not (build / LIBRARY).is_file():
        return f"the C++ runtime is not built ({build / LIBRARY} is missing; run: make cpp)"
    try:
        opened["runner"] = CppRunner(build, bundle_dir, precision, "cuda")
    except OSError as exc:
        return f"{build / LIBRARY} does not load ({exc})".splitlines()[0]
    except GlsnetError as exc:  # e.g. this libonnxruntime offers only CPUExecutionProvider; link onnxruntime-gpu
        return str(exc).splitlines()[0]
    return None
