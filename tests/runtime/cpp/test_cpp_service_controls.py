"""Service controls of the C++ runtime: glsnet_cancel from another thread stops a segment call in flight (ONNX
Runtime's terminate flag) with GLSNET_ERROR_CANCELLED, long before the call would have finished.
(The sanitizer run in test_cpp_runtime.py covers cancel from a row callback, deadlines and "no output".)
"""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np

from tests.runtime.cpp.c_abi import STATUS_CANCELLED, Image
from tests.runtime.cpp.test_cpp_runtime import CApi, _build, _scene


def test_cancel_from_another_thread_stops_a_call_in_flight(small_bundle):
    api = CApi(_build("cpp"))
    lib = api.lib
    lib.glsnet_image_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_segment_image.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_cancel_token_create.restype = ctypes.c_void_p
    lib.glsnet_cancel.argtypes = [ctypes.c_void_p]
    lib.glsnet_cancel_token_destroy.argtypes = [ctypes.c_void_p]
    handle = api.open(small_bundle, threads=2)
    token = lib.glsnet_cancel_token_create()
    try:
        pixels = np.ascontiguousarray(_scene(1200, 1500, seed=5))
        mask = np.zeros(pixels.shape[:2], np.uint8)
        image = Image()
        lib.glsnet_image_init(ctypes.byref(image), ctypes.sizeof(image))
        image.pixels, image.pixels_size = pixels.ctypes.data, pixels.nbytes
        image.height, image.width, image.channels = 1200, 1500, 3

        start = time.perf_counter()
        assert lib.glsnet_segment_image(handle, ctypes.byref(image), mask.ctypes.data, mask.nbytes) == 0, lib.glsnet_last_error()
        full = time.perf_counter() - start

        image.cancel = token
        timer = threading.Timer(full * 0.3, lambda: lib.glsnet_cancel(token))
        start = time.perf_counter()
        timer.start()
        status = lib.glsnet_segment_image(handle, ctypes.byref(image), mask.ctypes.data, mask.nbytes)
        stopped_after = time.perf_counter() - start - full * 0.3
        timer.join()
        assert status == STATUS_CANCELLED, lib.glsnet_last_error()
        assert b"cancelled" in lib.glsnet_last_error()
        assert stopped_after < full * 0.5, f"returned {stopped_after:.2f} s after the cancel; a whole call takes {full:.2f} s"
    finally:
        lib.glsnet_close(handle)
        lib.glsnet_cancel_token_destroy(token)
