"""The C++ runtime (runtime/cpp) against the Python runtime: byte-identical masks through the C API (ctypes)
and through glsnet-cpp, thread safety of one handle, and every C API error path under ASan + UBSan.

The library is built here if needed (runtime/cpp/build.sh into build/cpp, build/cpp-asan).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.algorithm.scheduler import ScheduleOptions
from runtime.errors import InputError
from runtime.image_io.readers import open_image
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.runtime.cpp.c_abi import Options

ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = ROOT / "runtime" / "cpp" / "build.sh"


def _build(folder: str, *flags: str, target: str | None = None) -> Path:
    build = ROOT / "build" / folder
    env = dict(os.environ, GLSNET_ORT_HEADERS_DIR=str(ROOT / "build" / "cpp"))
    if target:
        env["GLSNET_BUILD_TARGET"] = target
    result = subprocess.run(["bash", str(BUILD_SCRIPT), *flags, str(build), sys.executable], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"building the C++ runtime failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return build


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    return _build("cpp")


class CApi:
    """glsnet.h through ctypes."""

    def __init__(self, build: Path) -> None:
        lib = ctypes.CDLL(str(build / "libglsnet.so"))
        lib.glsnet_last_error.restype = ctypes.c_char_p
        lib.glsnet_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.glsnet_segment.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t]
        lib.glsnet_plan.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.glsnet_options_init.argtypes = [ctypes.c_void_p]
        lib.glsnet_close.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def open(self, bundle: Path, **options: object) -> ctypes.c_void_p:
        opts = Options()
        self.lib.glsnet_options_init(ctypes.byref(opts))
        keep = []
        for key, value in options.items():
            if isinstance(value, str):
                keep.append(value.encode())
                value = keep[-1]
            setattr(opts, key, value)
        handle = ctypes.c_void_p()
        status = self.lib.glsnet_open(str(bundle).encode(), ctypes.byref(opts), ctypes.byref(handle))
        assert status == 0, self.lib.glsnet_last_error().decode()
        return handle

    def segment(self, handle: ctypes.c_void_p, image: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image if image.ndim == 3 else image[:, :, None])
        mask = np.zeros(image.shape[:2], np.uint8)
        status = self.lib.glsnet_segment(handle, image.ctypes.data, image.nbytes, image.shape[0], image.shape[1], image.shape[2], mask.ctypes.data, mask.nbytes)
        assert status == 0, self.lib.glsnet_last_error().decode()
        return mask

    def plan(self, handle: ctypes.c_void_p, height: int, width: int) -> "PlanInfo":
        info = PlanInfo()
        info.struct_size = ctypes.sizeof(PlanInfo)
        assert self.lib.glsnet_plan(handle, height, width, ctypes.byref(info)) == 0, self.lib.glsnet_last_error().decode()
        return info


class PlanInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("batch_size", ctypes.c_int32),
        ("global_band_rows", ctypes.c_int32),
        ("patches", ctypes.c_int32),
        ("grid_rows", ctypes.c_int32),
        ("grid_cols", ctypes.c_int32),
        ("estimate_bytes", ctypes.c_uint64),
        ("budget_bytes", ctypes.c_uint64),
    ]


@pytest.fixture(scope="session")
def capi(cpp_build) -> CApi:
    return CApi(cpp_build)


@pytest.fixture(scope="session")
def python_segmenter(small_bundle):
    with Segmenter(small_bundle) as segmenter:
        yield segmenter


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A seeded scene with structure (smooth fields plus noise), so that every class boundary is exercised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(x / 37 + c) * np.cos(y / 23 - c) for c in range(3)], axis=2) * 90 + 128
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height,width", [(100, 90), (60, 70), (300, 415)])
def test_c_api_masks_equal_the_python_runtime_byte_for_byte(capi, small_bundle, python_segmenter, height, width):
    handle = capi.open(small_bundle)
    try:
        image = _scene(height, width, seed=height)
        expected = python_segmenter.segment(image)
        got = capi.segment(handle, image)
        assert got.dtype == np.uint8 and got.shape == (height, width)
        assert np.array_equal(got, expected), f"{int((got != expected).sum())} of {got.size} pixels differ"
        assert len(np.unique(expected)) > 1  # a constant mask would prove little
    finally:
        capi.lib.glsnet_close(handle)


@pytest.mark.slow
def test_c_api_parity_on_a_wide_awkward_image(capi, small_bundle, python_segmenter):
    handle = capi.open(small_bundle)
    try:
        image = _scene(1000, 3001, seed=3)
        got, expected = capi.segment(handle, image), python_segmenter.segment(image)
        assert np.array_equal(got, expected), f"{int((got != expected).sum())} of {got.size} pixels differ"
    finally:
        capi.lib.glsnet_close(handle)


def test_memory_budget_plans_and_banded_masks_match_python(capi, small_bundle):
    """A budget small enough to band the global branch: same plan, same mask, in both runtimes."""
    height, width = 700, 260
    with Segmenter(small_bundle) as unbounded:
        whole = unbounded.plan(height, width)
    budget = int(whole.estimate_bytes * 0.99)  # 1% below the unbounded plan: the global branch goes to bands
    handle = capi.open(small_bundle, max_memory=budget)
    try:
        with Segmenter(small_bundle, options=SegmenterOptions(max_memory=budget)) as segmenter:
            plan = segmenter.plan(height, width)
            info = capi.plan(handle, height, width)
            assert plan.global_band_rows is not None, "the budget should force global bands"
            assert (info.batch_size, info.global_band_rows, info.estimate_bytes, info.budget_bytes) == (
                plan.batch_size, plan.global_band_rows, plan.estimate_bytes, budget)
            image = _scene(height, width, seed=7)
            assert np.array_equal(capi.segment(handle, image), segmenter.segment(image))
    finally:
        capi.lib.glsnet_close(handle)


def test_forced_bands_and_batch_size_match_python(capi, small_bundle):
    options = SegmenterOptions(batch_size=5, global_band_rows=64, global_halo=32)
    handle = capi.open(small_bundle, batch_size=5, global_band_rows=64, global_halo=32)
    try:
        with Segmenter(small_bundle, options=options) as segmenter:
            image = _scene(333, 200, seed=11)
            assert np.array_equal(capi.segment(handle, image), segmenter.segment(image))
            assert capi.plan(handle, 333, 200).global_band_rows == 64
    finally:
        capi.lib.glsnet_close(handle)


@pytest.fixture(scope="session")
def single_graph_bundle(small_bundle, tmp_path_factory) -> Path:
    """A copy of the small bundle without stage graphs: the global branch runs as its single graph."""
    bundle = tmp_path_factory.mktemp("single") / "bundle"
    shutil.copytree(small_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest.pop("global_stages"), "the small bundle should carry stage graphs"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _python_plan(segmenter: Segmenter, height: int, width: int, **options: object) -> tuple:
    """(batch, band rows or 0, estimate, budget or 0), or ("error", message) for a budget too small."""
    scheduler = segmenter.scheduler
    try:
        plan = scheduler.plan(scheduler.grid_for(height, width), ScheduleOptions(**options))
    except InputError as exc:
        return "error", str(exc)
    return plan.batch_size, plan.global_band_rows or 0, plan.estimate_bytes, plan.budget_bytes or 0


def _cpp_plan(capi: CApi, bundle: Path, height: int, width: int, **options: object) -> tuple:
    """As _python_plan, through glsnet_plan."""
    handle = capi.open(bundle, **options)
    try:
        info = PlanInfo()
        info.struct_size = ctypes.sizeof(PlanInfo)
        if capi.lib.glsnet_plan(handle, height, width, ctypes.byref(info)) != 0:
            return "error", capi.lib.glsnet_last_error().decode()
        return info.batch_size, info.global_band_rows, info.estimate_bytes, info.budget_bytes
    finally:
        capi.lib.glsnet_close(handle)


@pytest.mark.parametrize("which", ["staged", "single graph"])
def test_c_api_plans_equal_python_plans_for_sizes_and_budgets(capi, small_bundle, single_graph_bundle, which):
    """Same least-time plan (batch, band, estimate) in both runtimes, with and without a budget or a batch size."""
    bundle = small_bundle if which == "staged" else single_graph_bundle
    sizes = [(100, 90), (700, 260), (1000, 3001), (9792, 2448)]
    with Segmenter(bundle) as segmenter:
        whole = {size: segmenter.plan(*size).estimate_bytes for size in sizes}
        chosen = set()
        for factor in (None, 0.3, 0.8, 1.0, 1.5):
            for batch_size in (None, 3):
                for size in sizes:
                    options: dict[str, object] = {} if batch_size is None else {"batch_size": batch_size}
                    if factor is not None:
                        options["max_memory"] = int(whole[size] * factor)
                    got = _cpp_plan(capi, bundle, *size, **options)
                    assert got == _python_plan(segmenter, *size, **options), f"{which} {size} {options}"
                    chosen.add(got[:2])
    assert len(chosen) > 6  # budgets that change the plan were exercised


def test_single_graph_bundle_bands_and_plans_as_python(capi, single_graph_bundle):
    """Without stage graphs both runtimes band the single global graph with its halo: same plan, same mask."""
    height, width = 700, 260
    with Segmenter(single_graph_bundle) as unbounded:
        budget = unbounded.plan(height, width).estimate_bytes - 1
    options = {"max_memory": budget, "global_halo": 64}
    handle = capi.open(single_graph_bundle, **options)
    try:
        with Segmenter(single_graph_bundle, options=SegmenterOptions(**options)) as segmenter:
            plan, info = segmenter.plan(height, width), capi.plan(handle, height, width)
            assert not plan.staged and plan.global_band_rows is not None, "the budget should band the single global graph"
            assert (info.batch_size, info.global_band_rows, info.estimate_bytes) == (plan.batch_size, plan.global_band_rows, plan.estimate_bytes)
            image = _scene(height, width, seed=13)
            assert np.array_equal(capi.segment(handle, image), segmenter.segment(image))
    finally:
        capi.lib.glsnet_close(handle)


def test_one_handle_from_eight_threads_gives_one_threads_masks(capi, small_bundle):
    handle = capi.open(small_bundle)
    try:
        images = [_scene(90 + 13 * i, 150 + 7 * i, seed=100 + i) for i in range(8)]
        alone = [capi.segment(handle, image) for image in images]
        together: list[np.ndarray | None] = [None] * 8
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                together[i] = capi.segment(handle, images[i])
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for i in range(8):
            assert np.array_equal(together[i], alone[i]), f"image {i} differs when segmented concurrently"
    finally:
        capi.lib.glsnet_close(handle)


def _run_cpp(build: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "glsnet-cpp"), *args], capture_output=True, text=True)


@pytest.mark.parametrize("suffix,fmt", [(".png", "png"), (".jpg", "tif"), (".tif", "png")])
def test_cli_writes_the_same_files_as_glsnet_run(cpp_build, small_bundle, python_segmenter, tmp_path, suffix, fmt):
    import tifffile
    from PIL import Image

    image = _scene(150, 230, seed=5)
    path = tmp_path / f"scene{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    else:
        Image.fromarray(image).save(path, quality=90)
    from runtime.image_io.writers import OutputOptions

    python_segmenter.segment_file(path, tmp_path / "py", OutputOptions(format=fmt))
    result = _run_cpp(cpp_build, "run", str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--format", fmt, "--threads", "2")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "cpp").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "py").iterdir()) == [f"scene_color.{fmt}", f"scene_mask.{fmt}"]
    for name in names:
        cpp, py = open_image(tmp_path / "cpp" / name), open_image(tmp_path / "py" / name)
        a, b = cpp.read_rows(0, cpp.height), py.read_rows(0, py.height)
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b), name


def test_cli_errors_are_one_line_and_leave_nothing(cpp_build, small_bundle, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = _run_cpp(cpp_build, "run", str(bad), "--bundle", str(small_bundle), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and str(bad) in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    result = _run_cpp(cpp_build, "run", str(bad), "--bundle", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and "not a directory" in result.stderr
    result = _run_cpp(cpp_build, "run", str(bad), "--bundle", str(small_bundle), "-o", str(tmp_path / "out"), "--max-memory", "lots")
    assert result.returncode == 2 and "--max-memory 'lots'" in result.stderr
    assert "Usage: glsnet-cpp run" in _run_cpp(cpp_build, "run", "--help").stdout


def _bad_bundles(bundle: Path, root: Path) -> dict[str, Path]:
    """Copies of the bundle with one defect each."""
    out = {}
    for kind in ("tampered", "schema", "escape"):
        copy = root / kind
        shutil.copytree(bundle, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        if kind == "tampered":
            with open(copy / manifest["graphs"]["fp32"]["local"]["file"], "ab") as fh:
                fh.write(b"\0")
        elif kind == "schema":
            manifest["schema_version"] = 2
        else:
            manifest["graphs"]["fp32"]["global"]["file"] = "../outside.onnx"
        (copy / "manifest.json").write_text(json.dumps(manifest))
        out[kind] = copy
    return out


def test_c_api_error_paths_under_address_and_undefined_behaviour_sanitizers(small_bundle, tmp_path):
    from PIL import Image

    build = _build("cpp-asan", "--sanitize", target="glsnet-c-api-test")
    bad = _bad_bundles(small_bundle, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(_scene(40, 50, seed=1)).save(work / "image.png")
    Image.fromarray(_scene(40, 50, seed=1)).save(work / "image.jpg")
    import tifffile

    tifffile.imwrite(work / "onestrip.tif", _scene(300, 120, seed=2), rowsperstrip=300, compression="zlib", photometric="rgb")
    (work / "garbage.tif").write_bytes(b"II*\0" + b"\xff" * 60)
    tifffile.imwrite(work / "geo.tif", _scene(70, 60, seed=3), tile=(32, 32), photometric="rgb",
                     extratags=[(33550, "d", 3, (0.25, 0.25, 0.0), True), (34737, "s", 0, "WGS 84|", True)])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
               LSAN_OPTIONS=f"suppressions={ROOT / 'runtime' / 'cpp' / 'tests' / 'lsan.supp'}")
    result = subprocess.run([str(build / "glsnet-c-api-test"), str(small_bundle), str(bad["tampered"]), str(bad["schema"]), str(bad["escape"]), str(work)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAIL" not in result.stdout and "0 failure(s)" in result.stdout
    assert "ERROR: AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr
    assert result.stdout.count("PASS") >= 30


def test_service_example_runs_threads_on_one_handle(cpp_build, small_bundle):
    result = subprocess.run([str(cpp_build / "glsnet-service-example"), str(small_bundle), "3", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("worker ")]) == 6


@pytest.mark.integration
def test_cli_parity_on_real_deepglobe_images(cpp_build, small_bundle, deepglobe_dir, python_segmenter, tmp_path):
    image = sorted(deepglobe_dir.glob("*_sat.jpg"))[0]
    python_segmenter.segment_file(image, tmp_path / "py")
    result = _run_cpp(cpp_build, "run", str(image), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"))
    assert result.returncode == 0, result.stderr
    for name in (f"{image.stem}_mask.png", f"{image.stem}_color.png"):
        a, b = open_image(tmp_path / "cpp" / name), open_image(tmp_path / "py" / name)
        assert (a.height, a.width) == (2448, 2448)
        assert np.array_equal(a.read_rows(0, a.height), b.read_rows(0, b.height)), name


@pytest.fixture(scope="session")
def fp16_bundle(small_bundle, tmp_path_factory) -> Path:
    """A copy of the small bundle with fp16 graphs (calibration.fp16) named in its manifest."""
    import dataclasses

    from calibration.fp16 import convert_graph_to_fp16
    from runtime.bundle.manifest import read_manifest, sha256_file, write_manifest

    bundle = tmp_path_factory.mktemp("fp16") / "bundle"
    shutil.copytree(small_bundle, bundle)
    manifest = read_manifest(bundle)
    fp16 = {}
    for role, spec in manifest.graphs["fp32"].items():
        target = bundle / "fp16" / f"{role}.onnx"
        target.parent.mkdir(exist_ok=True)
        convert_graph_to_fp16(bundle / spec.file, target)
        fp16[role] = dataclasses.replace(spec, file=f"fp16/{role}.onnx", precision="fp16", sha256=sha256_file(target))
    write_manifest(bundle, manifest.replace(graphs={**manifest.graphs, "fp16": fp16}))
    return bundle


def test_fp16_masks_agree_with_the_python_runtime(capi, fp16_bundle):
    handle = capi.open(fp16_bundle, precision="fp16")
    try:
        with Segmenter(fp16_bundle, precision="fp16") as segmenter:
            for height, width in ((100, 90), (300, 415)):
                image = _scene(height, width, seed=height + 1)
                agreement = float(np.mean(capi.segment(handle, image) == segmenter.segment(image)))
                assert agreement >= 0.9999, f"{height} x {width}: fp16 masks agree on {agreement:.6%} of pixels"
    finally:
        capi.lib.glsnet_close(handle)
