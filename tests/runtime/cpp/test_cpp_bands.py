"""Band selection in the C++ runtime (glsnet-cpp --bands, glsnet_options.bands) against `glsnet run --bands`: the same
masks for a reordered selection of a 4-band image, and Python's messages for every refusal.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from runtime.cli_options import parse_bands
from runtime.errors import InputError
from runtime.image_io.readers import open_image
from runtime.options import SegmenterOptions
from runtime.segmenter import Segmenter
from tests.runtime.cpp.c_abi import OptionsWithBands
from tests.runtime.cpp.test_cpp_runtime import CApi, _build, _scene


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    return _build("cpp")


def _four_bands(seed: int) -> np.ndarray:
    """An RGB scene plus a fourth band unlike the others, so that every selection gives another mask."""
    rgb = _scene(110, 150, seed=seed)
    extra = (255 - rgb[:, :, 1:2]) // 2 + 40
    return np.concatenate([rgb, extra], axis=2)


def _cpp(build: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "glsnet-cpp"), "run", *args], capture_output=True, text=True, check=False)


def _python_message(bundle: Path, image: Path, bands: str) -> str:
    """What `glsnet run --bands` says: parse_bands, then the Segmenter's check, then the image's."""
    with pytest.raises(InputError) as caught:
        options = SegmenterOptions(bands=parse_bands(bands))
        with Segmenter(bundle, options=options) as segmenter:
            segmenter.segment_file(image, image.parent / "py-refused")
    return str(caught.value)


@pytest.mark.parametrize("bands", ["3,1,0", "2, 3, 1", "0,1,2"])
def test_selected_bands_give_glsnet_runs_masks(cpp_build, small_bundle, tmp_path, bands):
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, _four_bands(seed=51), tile=(64, 64), photometric="minisblack", planarconfig="contig")
    with Segmenter(small_bundle, options=SegmenterOptions(bands=parse_bands(bands))) as segmenter:
        segmenter.segment_file(path, tmp_path / "py")
    result = _cpp(cpp_build, str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--bands", bands)
    assert result.returncode == 0, result.stderr
    for name in ("four_mask.png", "four_color.png"):
        a, b = open_image(tmp_path / "cpp" / name), open_image(tmp_path / "py" / name)
        assert np.array_equal(a.read_rows(0, a.height), b.read_rows(0, b.height)), f"{name} differs with --bands {bands}"


def test_band_selection_changes_the_mask_and_reaches_the_c_api(cpp_build, small_bundle):
    api = CApi(cpp_build)
    api.lib.glsnet_options_init_sized.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    api.lib.glsnet_input_bands.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)]
    image = _four_bands(seed=52)
    masks = {}
    for bands in ("", "3,1,0"):
        options = OptionsWithBands()
        api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
        assert options.bands is None
        options.bands = bands.encode()
        handle = ctypes.c_void_p()
        assert api.lib.glsnet_open(str(small_bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == 0, api.lib.glsnet_last_error()
        try:
            needed = ctypes.c_int32()
            assert api.lib.glsnet_input_bands(handle, ctypes.byref(needed)) == 0
            assert needed.value == (4 if bands else 3)
            masks[bands] = api.segment(handle, image)
        finally:
            api.lib.glsnet_close(handle)
    with Segmenter(small_bundle, options=SegmenterOptions(bands=(3, 1, 0))) as segmenter:
        assert np.array_equal(masks["3,1,0"], segmenter.segment(image))
    assert not np.array_equal(masks[""], masks["3,1,0"]), "the selection did not change what the model saw"

    options = OptionsWithBands()
    api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.bands = b"0,1"
    handle = ctypes.c_void_p()
    assert api.lib.glsnet_open(str(small_bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == 1
    assert api.lib.glsnet_last_error().decode() == _python_message(small_bundle, Path("unused.png"), "0,1")


@pytest.mark.parametrize("bands", ["0,x", "-1,0,1", "0,,1", "0,1", "0,1,2,3", "0,1,5", "'0,1'"])
def test_refusals_carry_glsnet_runs_messages(cpp_build, small_bundle, tmp_path, bands):
    path = tmp_path / "rgb.png"
    from PIL import Image

    Image.fromarray(_scene(40, 50, seed=53)).save(path)
    expected = _python_message(small_bundle, path, bands)
    result = _cpp(cpp_build, str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--bands", bands)
    assert result.returncode == 2 and result.stderr.strip() == "error: " + expected
    assert not (tmp_path / "cpp").exists() or not any((tmp_path / "cpp").iterdir())
