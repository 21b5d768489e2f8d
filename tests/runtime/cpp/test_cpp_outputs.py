"""The C++ runtime's other outputs against `glsnet run`'s: the per-class statistics JSON (text for text) and the
GeoTIFF tags copied onto TIFF masks (the same tags, types and values; GDAL's value tags left out; masks equal).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from runtime.image_io.readers import GEO_TAGS
from runtime.image_io.writers import OutputOptions
from runtime.segmenter import Segmenter
from tests.runtime.cpp.c_abi import FileOptions
from tests.runtime.cpp.test_cpp_runtime import CApi, _build, _scene

GDAL_NODATA, GDAL_METADATA = 42113, 42112


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    return _build("cpp")


@pytest.fixture(scope="module")
def python_segmenter(small_bundle):
    with Segmenter(small_bundle) as segmenter:
        yield segmenter


def _cpp(build: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "glsnet-cpp"), "run", *args], capture_output=True, text=True, check=False)


def _geotiff(path: Path, image: np.ndarray, transformation: bool = False, **layout: object) -> list[int]:
    """A GeoTIFF as GDAL writes one: georeferencing tags (a pixel scale and tie point, or a transformation matrix) plus
    GDAL's nodata and metadata tags. Returns the georeferencing tag codes written."""
    geokeys = (1, 1, 0, 4, 1024, 0, 1, 2, 1025, 0, 1, 1, 2048, 0, 1, 4326, 2049, 34737, 7, 0)
    if transformation:
        placement = [(34264, "d", 16, (0.5, 0.0, 0.0, 300000.0, 0.0, -0.5, 0.0, 4500000.0) + (0.0,) * 7 + (1.0,), True)]
    else:
        placement = [(33550, "d", 3, (0.0001, 0.0001, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 12.5, 41.25, 0.0), True)]
    tifffile.imwrite(
        path, image, photometric="rgb", compression="zlib", **layout,
        extratags=placement + [
            (34735, "H", len(geokeys), geokeys, True),
            (34736, "d", 2, (298.257223563, 6378137.0), True),
            (34737, "s", 0, "WGS 84|", True),
            (GDAL_NODATA, "s", 0, "0", True),
            (GDAL_METADATA, "s", 0, "<GDALMetadata><Item name='x'>1</Item></GDALMetadata>", True),
        ],
    )
    return sorted(tag[0] for tag in placement) + [34735, 34736, 34737]


def _tags(path: Path) -> dict[int, tuple[int, object]]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return {tag.code: (int(tag.dtype), tag.value) for tag in page.tags.values() if tag.code in GEO_TAGS or tag.code in (GDAL_NODATA, GDAL_METADATA)}


@pytest.mark.parametrize("transformation,layout", [(False, {"tile": (64, 64)}), (True, {"rowsperstrip": 16})],
                         ids=["tiepoint-tiled", "transformation-strips"])
def test_tiff_masks_carry_the_geotiff_tags_glsnet_run_copies(cpp_build, small_bundle, python_segmenter, tmp_path, transformation, layout):
    path = tmp_path / "scene.tif"
    written = _geotiff(path, _scene(130, 170, seed=41), transformation, **layout)
    python_segmenter.segment_file(path, tmp_path / "py", OutputOptions(format="tif"))
    result = _cpp(cpp_build, str(path), "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--format", "tif")
    assert result.returncode == 0, result.stderr
    for name in ("scene_mask.tif", "scene_color.tif"):
        cpp, py = _tags(tmp_path / "cpp" / name), _tags(tmp_path / "py" / name)
        assert sorted(py) == written, f"glsnet run's {name} has GeoTIFF tags {sorted(py)}, expected {written}"
        assert cpp == py, f"{name}: C++ tags {cpp} differ from glsnet run's {py}"
        a, b = tifffile.imread(tmp_path / "cpp" / name), tifffile.imread(tmp_path / "py" / name)
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b), name


def test_png_outputs_and_plain_tiffs_carry_no_geotiff_tags(cpp_build, small_bundle, tmp_path):
    geo, plain = tmp_path / "geo.tif", tmp_path / "plain.tif"
    _geotiff(geo, _scene(70, 90, seed=42), tile=(32, 32))
    tifffile.imwrite(plain, _scene(70, 90, seed=42), photometric="rgb", tile=(32, 32))
    assert _cpp(cpp_build, str(geo), "--bundle", str(small_bundle), "-o", str(tmp_path / "png")).returncode == 0
    assert (tmp_path / "png" / "geo_mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _cpp(cpp_build, str(plain), "--bundle", str(small_bundle), "-o", str(tmp_path / "tif"), "--format", "tif").returncode == 0
    assert _tags(tmp_path / "tif" / "plain_mask.tif") == {}


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_statistics_json_equals_glsnet_runs_text_for_text(cpp_build, small_bundle, python_segmenter, tmp_path, monkeypatch, suffix):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    image = _scene(123, 187, seed=43)
    if suffix == ".tif":
        tifffile.imwrite(tmp_path / f"scene{suffix}", image, tile=(64, 64))
    else:
        Image.fromarray(image).save(tmp_path / f"scene{suffix}")
    given = f".//scene{suffix}"  # as typed: both write str(Path(given)) into "image"
    python_segmenter.segment_file(given, tmp_path / "py", OutputOptions(stats=True))
    result = _cpp(cpp_build, given, "--bundle", str(small_bundle), "-o", str(tmp_path / "cpp"), "--stats")
    assert result.returncode == 0, result.stderr
    assert "scene_stats.json" in result.stderr
    cpp, py = (tmp_path / "cpp" / "scene_stats.json").read_text(), (tmp_path / "py" / "scene_stats.json").read_text()
    assert cpp == py
    stats = json.loads(cpp)
    assert stats["image"] == f"scene{suffix}" and stats["pixels"] == 123 * 187 == sum(c["pixels"] for c in stats["classes"])
    assert sorted(p.name for p in (tmp_path / "cpp").iterdir()) == sorted(p.name for p in (tmp_path / "py").iterdir())


def test_statistics_only_when_asked_and_all_outputs_or_none(cpp_build, small_bundle, tmp_path):
    from PIL import Image

    api = CApi(cpp_build)
    api.lib.glsnet_file_options_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    api.lib.glsnet_segment_file_with.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    path = tmp_path / "scene.png"
    Image.fromarray(_scene(60, 80, seed=44)).save(path)
    handle = api.open(small_bundle)
    try:
        options = FileOptions()
        api.lib.glsnet_file_options_init(ctypes.byref(options), ctypes.sizeof(options))
        assert options.stats == 0 and options.color == 1
        out = tmp_path / "default"
        assert api.lib.glsnet_segment_file_with(handle, str(path).encode(), str(out).encode(), ctypes.byref(options)) == 0
        assert sorted(p.name for p in out.iterdir()) == ["scene_color.png", "scene_mask.png"]

        options.stats = 1
        out = tmp_path / "blocked"
        (out / "scene_stats.json").mkdir(parents=True)  # a folder where the statistics go: nothing at all is written
        status = api.lib.glsnet_segment_file_with(handle, str(path).encode(), str(out).encode(), ctypes.byref(options))
        assert status == 4 and b"scene_stats.json" in api.lib.glsnet_last_error()
        assert sorted(p.name for p in out.iterdir()) == ["scene_stats.json"]
        out = tmp_path / "stats"
        assert api.lib.glsnet_segment_file_with(handle, str(path).encode(), str(out).encode(), ctypes.byref(options)) == 0
        assert sorted(p.name for p in out.iterdir()) == ["scene_color.png", "scene_mask.png", "scene_stats.json"]
    finally:
        api.lib.glsnet_close(handle)
