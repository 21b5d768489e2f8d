"""Typed, strided input in the C++ runtime against the Python runtime (runtime/image_io/input_range.py): 16-bit and
float32 images are refused without an input range with Python's message, and with one their masks equal
`glsnet run`'s byte for byte, through glsnet-cpp, glsnet_segment_file_with and glsnet_segment_image; a strided
buffer gives the packed buffer's mask; older (smaller) structs are accepted.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from runtime.errors import InputError
from runtime.image_io.input_range import parse_input_range
from runtime.image_io.readers import open_image
from runtime.options import SegmenterOptions
from runtime.segmenter import Segmenter
from tests.runtime.cpp.c_abi import (
    PIXEL_FLOAT32,
    PIXEL_UINT8,
    PIXEL_UINT16,
    STATUS_INPUT,
    STATUS_INVALID_ARGUMENT,
    TypedFileOptions,
    TypedImage,
)
from tests.runtime.cpp.test_cpp_runtime import CApi, _build, _scene


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    return _build("cpp")


@pytest.fixture(scope="module")
def capi(cpp_build) -> CApi:
    api = CApi(cpp_build)
    lib = api.lib
    lib.glsnet_image_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_segment_image.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_file_options_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_segment_file_with.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    return api


@pytest.fixture(scope="module")
def handle(capi, small_bundle):
    h = capi.open(small_bundle)
    yield h
    capi.lib.glsnet_close(h)


def _wide(image8: np.ndarray, dtype: str) -> np.ndarray:
    """The 8-bit scene as 16-bit (x257, so 0,65535 maps it back onto 0..255) or float32 in [0, 1]."""
    if dtype == "uint16":
        return image8.astype(np.uint16) * np.uint16(257)
    return (image8.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _segment_image(capi: CApi, handle, pixels: np.ndarray, pixel_type: int, input_range: str | None, row_pitch: int = 0,
                   height: int | None = None, width: int | None = None) -> tuple[int, np.ndarray]:
    height = pixels.shape[0] if height is None else height
    width = pixels.shape[1] if width is None else width
    image = TypedImage()
    capi.lib.glsnet_image_init(ctypes.byref(image), ctypes.sizeof(image))
    image.pixel_type, image.pixels, image.pixels_size = pixel_type, pixels.ctypes.data, pixels.nbytes
    image.height, image.width, image.channels, image.row_pitch = height, width, 3, row_pitch
    image.input_range = input_range.encode() if input_range else None
    mask = np.zeros((height, width), np.uint8)
    status = capi.lib.glsnet_segment_image(handle, ctypes.byref(image), mask.ctypes.data, mask.nbytes)
    return status, mask


def _python_error(bundle: Path, path: Path, input_range: str | None = None) -> str:
    options = SegmenterOptions(input_range=parse_input_range(input_range))
    with Segmenter(bundle, options=options) as segmenter, pytest.raises(InputError) as caught:
        segmenter.segment_file(path, path.parent / "py-refused")
    return str(caught.value)


def _masks_equal(a_dir: Path, b_dir: Path, names: list[str]) -> None:
    for name in names:
        a, b = open_image(a_dir / name), open_image(b_dir / name)
        x, y = a.read_rows(0, a.height), b.read_rows(0, b.height)
        assert x.shape == y.shape and np.array_equal(x, y), f"{name}: {int((x != y).sum())} values differ"


@pytest.mark.parametrize("dtype,input_range", [("uint16", "0,65535"), ("float32", "0,1")])
def test_cli_refuses_wide_tiffs_without_a_range_and_matches_glsnet_run_with_one(cpp_build, small_bundle, tmp_path, dtype, input_range):
    path = tmp_path / f"scene_{dtype}.tif"
    tifffile.imwrite(path, _wide(_scene(140, 190, seed=31), dtype), tile=(64, 64), compression="zlib", photometric="rgb")
    cli = cpp_build / "glsnet-cpp"
    refused = subprocess.run([str(cli), "run", str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp")], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip() == "error: " + _python_error(small_bundle, path)
    assert "--input-range" in refused.stderr and f"pixel type {dtype}" in refused.stderr
    assert not (tmp_path / "cpp").exists() or not any((tmp_path / "cpp").iterdir())

    options = SegmenterOptions(input_range=parse_input_range(input_range))
    with Segmenter(small_bundle, options=options) as segmenter:
        segmenter.segment_file(path, tmp_path / "py")
    ran = subprocess.run([str(cli), "run", str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--input-range", input_range],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    _masks_equal(tmp_path / "cpp", tmp_path / "py", [f"{path.stem}_mask.png", f"{path.stem}_color.png"])


def test_percentile_stretch_and_per_band_ranges_match_glsnet_run(cpp_build, small_bundle, tmp_path):
    path = tmp_path / "scene.tif"
    image = _scene(150, 170, seed=41).astype(np.uint16) * np.array([16, 12, 9], np.uint16)  # 12-bit-ish, bands differ
    tifffile.imwrite(path, image, compression="zlib", rowsperstrip=32)
    for index, text in enumerate(["p2,p98", "0,4095/0,3060/0,2295", "100,3000"]):
        options = SegmenterOptions(input_range=parse_input_range(text))
        with Segmenter(small_bundle, options=options) as segmenter:
            segmenter.segment_file(path, tmp_path / f"py{index}")
        ran = subprocess.run([str(cpp_build / "glsnet-cpp"), "run", str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / f"cpp{index}"),
                              "--input-range", text, "--no-color"], capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        _masks_equal(tmp_path / f"cpp{index}", tmp_path / f"py{index}", ["scene_mask.png"])


@pytest.mark.parametrize("text", ["0,65535/0,255", "abc", "p5", "10,2", "p50,p10", "0,nan"])
def test_bad_ranges_give_python_s_messages(cpp_build, small_bundle, tmp_path, text):
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, _wide(_scene(40, 50, seed=3), "uint16"))
    try:
        expected = _python_error(small_bundle, path, text)
    except InputError as exc:  # a malformed range is refused while parsing
        expected = str(exc)
    ran = subprocess.run([str(cpp_build / "glsnet-cpp"), "run", str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "out"),
                          "--input-range", text], capture_output=True, text=True)
    assert ran.returncode == 2 and ran.stderr.strip() == f"error: {expected}"


def test_c_api_file_call_refuses_a_16_bit_tiff_without_a_range_and_segments_it_with_one(capi, handle, small_bundle, tmp_path):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, _wide(_scene(90, 120, seed=9), "uint16"), tile=(32, 32))
    lib = capi.lib
    lib.glsnet_segment_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    status = lib.glsnet_segment_file(handle, str(path).encode(), str(tmp_path / "old-call").encode(), b"png", 1)
    assert status == STATUS_INPUT and lib.glsnet_last_error().decode() == _python_error(small_bundle, path)
    options = TypedFileOptions()
    lib.glsnet_file_options_init(ctypes.byref(options), ctypes.sizeof(options))
    options.input_range = b"0,65535"
    assert lib.glsnet_segment_file_with(handle, str(path).encode(), str(tmp_path / "cpp").encode(), ctypes.byref(options)) == 0, lib.glsnet_last_error()
    with Segmenter(small_bundle, options=SegmenterOptions(input_range=parse_input_range("0,65535"))) as segmenter:
        segmenter.segment_file(path, tmp_path / "py")
    _masks_equal(tmp_path / "cpp", tmp_path / "py", ["wide_mask.png", "wide_color.png"])


@pytest.mark.parametrize("dtype,pixel_type,input_range", [("uint8", PIXEL_UINT8, None), ("uint16", PIXEL_UINT16, "0,65535"), ("float32", PIXEL_FLOAT32, "0,1")])
def test_typed_strided_buffers_give_the_packed_and_the_python_mask(capi, handle, small_bundle, dtype, pixel_type, input_range):
    pixels = _wide(_scene(110, 130, seed=17), dtype) if dtype != "uint8" else _scene(110, 130, seed=17)
    options = SegmenterOptions(input_range=parse_input_range(input_range))
    with Segmenter(small_bundle, options=options) as segmenter:
        expected = segmenter.segment(pixels)
    status, packed = _segment_image(capi, handle, np.ascontiguousarray(pixels), pixel_type, input_range)
    assert status == 0, capi.lib.glsnet_last_error()
    assert np.array_equal(packed, expected)
    # rows 37 samples wider than the image (a crop of a larger buffer), and the margin filled with noise
    wider = np.random.default_rng(0).integers(0, 255, (110, 130 + 37, 3)).astype(pixels.dtype)
    wider[:, :130] = pixels
    status, strided = _segment_image(capi, handle, wider, pixel_type, input_range, row_pitch=wider.strides[0], width=130)
    assert status == 0, capi.lib.glsnet_last_error()
    assert np.array_equal(strided, packed)


def test_typed_buffer_without_a_range_is_refused_with_python_s_message(capi, handle, small_bundle):
    pixels = _wide(_scene(30, 40, seed=1), "uint16")
    with Segmenter(small_bundle) as segmenter, pytest.raises(InputError) as caught:
        segmenter.segment(pixels)
    status, _ = _segment_image(capi, handle, pixels, PIXEL_UINT16, None)
    assert status == STATUS_INPUT and capi.lib.glsnet_last_error().decode() == str(caught.value)


def test_bad_typed_buffers_are_invalid_arguments(capi, handle):
    pixels = np.zeros((20, 30, 3), np.uint16)
    cases = {
        "row pitch below a row": dict(row_pitch=30 * 3 * 2 - 2),
        "buffer too small for the pitch": dict(row_pitch=30 * 3 * 2 + 64),
        "unknown pixel type": dict(pixel_type=7),
        "odd pitch for 16-bit samples": dict(row_pitch=30 * 3 * 2 + 1),
    }
    for what, change in cases.items():
        status, _ = _segment_image(capi, handle, pixels, change.get("pixel_type", PIXEL_UINT16), "0,65535", row_pitch=change.get("row_pitch", 0))
        assert status == STATUS_INVALID_ARGUMENT, what
        assert capi.lib.glsnet_last_error(), what
