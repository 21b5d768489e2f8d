"""The C API's logging callback: each handle's ONNX Runtime messages and the runtime's own warnings (libtiff) reach
that handle's callback at the levels it asked for; a handle without one logs as before (nothing on stderr below
ONNX Runtime's error level); a closed handle's callback is never called again.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
import tifffile

from tests.runtime.cpp.c_abi import (
    LOG_CALLBACK,
    LOG_ERROR,
    LOG_INFO,
    LOG_VERBOSE,
    LOG_WARNING,
    OptionsWithLog,
)
from tests.runtime.cpp.test_cpp_runtime import CApi, _build, _scene


@pytest.fixture(scope="module")
def api() -> CApi:
    api = CApi(_build("cpp"))
    api.lib.glsnet_options_init_sized.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    api.lib.glsnet_segment_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    return api


received: dict[int, list[tuple[int, str]]] = {}


@LOG_CALLBACK
def _collect(user_data, level, message):
    received.setdefault(int(user_data or 0), []).append((level, message.decode(errors="replace")))


def _open(api: CApi, bundle: Path, key: int | None, level: int = LOG_WARNING) -> tuple[int, ctypes.c_void_p]:
    options = OptionsWithLog()
    api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    assert options.log_level == LOG_WARNING and not options.log_callback
    if key is not None:
        options.log_callback, options.log_user_data, options.log_level = _collect, key, level
    handle = ctypes.c_void_p()
    status = api.lib.glsnet_open(str(bundle).encode(), ctypes.byref(options), ctypes.byref(handle))
    return status, handle


def test_each_handle_logs_to_its_own_callback_at_its_level(api, small_bundle, tmp_path, capfd):
    received.clear()
    _, verbose = _open(api, small_bundle, 1, LOG_VERBOSE)
    _, quiet = _open(api, small_bundle, 2, LOG_ERROR)
    try:
        onnxruntime = received.get(1, [])
        assert onnxruntime, "ONNX Runtime's session messages did not reach the verbose handle's callback"
        assert {level for level, _ in onnxruntime} <= {LOG_VERBOSE, LOG_INFO, LOG_WARNING, LOG_ERROR} and min(level for level, _ in onnxruntime) < LOG_WARNING
        assert 2 not in received, f"the error-level handle got {received.get(2)}"

        geo = tmp_path / "geo.tif"
        tifffile.imwrite(geo, _scene(50, 60, seed=61), photometric="rgb", tile=(32, 32),
                         extratags=[(33550, "d", 3, (0.5, 0.5, 0.0), True)])
        before = len(received[1])
        assert api.lib.glsnet_segment_file(verbose, str(geo).encode(), str(tmp_path / "a").encode(), b"tif", 0) == 0
        runtime_messages = [m for level, m in received[1][before:] if level == LOG_INFO and "Unknown field with tag 33550" in m]
        assert runtime_messages, f"libtiff's warning about the GeoTIFF tag did not reach the log: {received[1][before:][:5]}"
        assert api.lib.glsnet_segment_file(quiet, str(geo).encode(), str(tmp_path / "b").encode(), b"tif", 0) == 0
        assert 2 not in received

        capfd.readouterr()
        seen = len(received[1])
        status, plain = _open(api, small_bundle, None)  # no callback: as before, nothing printed below ORT's error level
        assert status == 0
        assert api.lib.glsnet_segment_file(plain, str(geo).encode(), str(tmp_path / "c").encode(), b"tif", 0) == 0
        api.lib.glsnet_close(plain)
        assert capfd.readouterr().err == ""
        assert len(received[1]) == seen, "another handle's messages reached this handle's callback"
    finally:
        api.lib.glsnet_close(verbose)
        api.lib.glsnet_close(quiet)

    seen = len(received[1])
    _, other = _open(api, small_bundle, 3, LOG_VERBOSE)
    api.lib.glsnet_close(other)
    assert received.get(3), "the new handle's callback got nothing"
    assert len(received[1]) == seen, "a closed handle's callback was called"


def test_log_level_out_of_range_is_refused(api, small_bundle):
    status, _ = _open(api, small_bundle, 4, 7)
    assert status == 1 and b"log_level" in api.lib.glsnet_last_error()


def _activation_messages(key: int) -> list[str]:
    return [m for level, m in received.get(key, []) if level == LOG_VERBOSE and "activation blocks" in m]


def test_verbose_log_reports_activation_blocks_reused_between_graph_runs(api, small_bundle, tmp_path):
    """On the CPU with the arena off, freed activation blocks serve the next graph runs (src/activation_cache.hpp)."""
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(_scene(700, 900, seed=62)).save(image)
    received.clear()
    _, handle = _open(api, small_bundle, 11, LOG_VERBOSE)
    try:
        assert api.lib.glsnet_segment_file(handle, str(image).encode(), str(tmp_path / "a").encode(), b"png", 0) == 0
    finally:
        api.lib.glsnet_close(handle)
    (message,) = _activation_messages(11)
    mapped, reused = (int(n) for n in re.search(r"(\d+) MiB of new pages, (\d+) kept blocks reused", message).groups())
    assert mapped > 0 and reused > 0, message
    assert message.startswith(str(image)), message

    options = OptionsWithLog()  # ONNX Runtime's own arena instead: no cache, no such message
    api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.log_callback, options.log_user_data, options.log_level, options.cpu_arena = _collect, 12, LOG_VERBOSE, 1
    handle = ctypes.c_void_p()
    assert api.lib.glsnet_open(str(small_bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == 0
    try:
        assert api.lib.glsnet_segment_file(handle, str(image).encode(), str(tmp_path / "b").encode(), b"png", 0) == 0
    finally:
        api.lib.glsnet_close(handle)
    assert received.get(12) and not _activation_messages(12)
