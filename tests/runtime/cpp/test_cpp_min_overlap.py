"""--min-overlap in the C++ runtime (glsnet-cpp run --min-overlap, glsnet_options.min_overlap) against `glsnet run
--min-overlap`: the same grid and byte-identical masks at a non-default overlap, and the same refusal of bad values.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.image_io.readers import open_image
from tests.runtime.cpp.c_abi import STATUS_INVALID_ARGUMENT, OptionsWithLog, OptionsWithOverlap
from tests.runtime.cpp.test_cpp_runtime import CApi, PlanInfo, _build, _scene

SIZE = 360  # the small bundle (128 px patches, 16 px overlap): 4 x 4 patches, 3 x 3 at an 8 px overlap
OVERLAP = 8
REFUSAL = "--min-overlap {}: the minimum patch overlap must be a whole number of pixels, at least 0 and less than the bundle's patch size"


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    return _build("cpp")


def _cpp(build: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "glsnet-cpp"), "run", *args], capture_output=True, text=True, check=False)


def _glsnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "run", *args], capture_output=True, text=True, check=False, env=dict(os.environ, COLUMNS="200"))


def _error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error: "))


def test_glsnet_cpp_and_glsnet_run_write_the_same_mask_at_a_chosen_overlap(cpp_build, small_bundle, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(_scene(SIZE, SIZE, seed=3)).save(image)
    masks = {}
    for name, run in (("cpp", lambda *args: _cpp(cpp_build, *args)), ("py", _glsnet)):
        for overlap in (None, OVERLAP):
            out = tmp_path / f"{name}-{overlap}"
            flags = [] if overlap is None else ["--min-overlap", str(overlap)]
            result = run(str(image), "--bundle", str(small_bundle), "-o", str(out), "--no-color", *flags)
            assert result.returncode == 0, result.stderr
            mask = open_image(out / "scene_mask.png")
            masks[name, overlap] = mask.read_rows(0, mask.height)
    assert np.array_equal(masks["cpp", OVERLAP], masks["py", OVERLAP])
    assert np.array_equal(masks["cpp", None], masks["py", None])
    assert not np.array_equal(masks["cpp", OVERLAP], masks["cpp", None]), "a 3 x 3 grid blends other patches than the 4 x 4 one"


def test_the_c_api_plans_the_chosen_grid_and_an_older_struct_keeps_the_bundles(cpp_build, small_bundle):
    api = CApi(cpp_build)
    api.lib.glsnet_options_init_sized.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    grids = {}
    for layout, overlap in ((OptionsWithOverlap, OVERLAP), (OptionsWithOverlap, None), (OptionsWithLog, None)):
        options = layout()
        api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
        if layout is OptionsWithOverlap:
            assert options.min_overlap == -1  # the default: the bundle's
        if overlap is not None:
            options.min_overlap = overlap
        handle = ctypes.c_void_p()
        assert api.lib.glsnet_open(str(small_bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == 0, api.lib.glsnet_last_error()
        try:
            plan = PlanInfo(struct_size=ctypes.sizeof(PlanInfo))
            assert api.lib.glsnet_plan(handle, SIZE, SIZE, ctypes.byref(plan)) == 0, api.lib.glsnet_last_error()
            grids[layout.__name__, overlap] = (plan.grid_rows, plan.grid_cols, plan.patches)
        finally:
            api.lib.glsnet_close(handle)
    assert grids == {("OptionsWithOverlap", OVERLAP): (3, 3, 9), ("OptionsWithOverlap", None): (4, 4, 16), ("OptionsWithLog", None): (4, 4, 16)}


@pytest.mark.parametrize("value", ["128", "500", "-1", "-7"])
def test_bad_overlaps_are_refused_by_both_in_the_same_words(cpp_build, small_bundle, tmp_path, value):
    image = tmp_path / "scene.png"
    Image.fromarray(_scene(60, 70, seed=1)).save(image)
    cpp = _cpp(cpp_build, str(image), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--min-overlap", value)
    py = _glsnet(str(image), "--bundle", str(small_bundle), "-o", str(tmp_path / "py"), "--min-overlap", value)
    assert cpp.returncode == py.returncode == 2, (cpp.stderr, py.stderr)
    expected = REFUSAL.format(value) + (" (128 px)" if int(value) >= 0 else "")
    assert _error_line(cpp.stderr) == _error_line(py.stderr) == f"error: {expected}"
    for out in ("cpp", "py"):
        assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir())


def test_the_c_api_refuses_a_bad_overlap(cpp_build, small_bundle):
    api = CApi(cpp_build)
    api.lib.glsnet_options_init_sized.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    for value in (128, -2):
        options = OptionsWithOverlap()
        api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
        options.min_overlap = value
        handle = ctypes.c_void_p()
        assert api.lib.glsnet_open(str(small_bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == STATUS_INVALID_ARGUMENT
        message = api.lib.glsnet_last_error().decode()
        assert message.startswith(REFUSAL.format(value)), message
