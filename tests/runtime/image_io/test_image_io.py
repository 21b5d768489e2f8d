"""Image readers (windowed TIFF, Pillow with an explicit pixel limit) and writers (atomic, GeoTIFF tags)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from runtime.atomic_file import _UMASK
from runtime.bundle.manifest import Manifest, Normalization, PatchSpec
from runtime.errors import InputError
from runtime.image_io.readers import ArraySource, PillowSource, TiffSource, open_image
from runtime.image_io.writers import OutputOptions, OutputPaths, write_outputs

GEO_EXTRATAGS = [
    (33550, "d", 3, (0.5, 0.5, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4100000.0, 0.0), True),
    (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
    (34737, "s", 0, "WGS 84 / UTM zone 33N|", True),
]
NODATA_TAG = (42113, "s", 0, "255", True)  # describes input pixel values: must not reach a class mask


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (301, 203, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    "layout",
    [
        dict(tile=(64, 32), compression="zlib"),
        dict(rowsperstrip=7),
        dict(rowsperstrip=1000),
    ],
)
@pytest.mark.parametrize("window", [(0, 301), (0, 1), (63, 65), (100, 229), (300, 301), (250, 400)])
def test_tiff_windows_equal_the_whole_image(tmp_path, pixels, layout, window):
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", extrasamples=["unspecified"], **layout)
    source = open_image(path)
    assert isinstance(source, TiffSource)
    assert (source.height, source.width, source.bands) == (301, 203, 4)
    top, bottom = window
    np.testing.assert_array_equal(source.read_rows(top, bottom), pixels[top:bottom])
    source.close()


def test_tiff_with_separate_planes_reads_band_by_band(tmp_path, pixels):
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, pixels.transpose(2, 0, 1), planarconfig="separate", photometric="minisblack", rowsperstrip=16)
    source = open_image(path)
    assert source.bands == 4
    np.testing.assert_array_equal(source.read_rows(10, 90), pixels[10:90])
    source.close()


def test_tiff_reads_only_the_segments_it_needs(tmp_path, pixels, monkeypatch):
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", extrasamples=["unspecified"], tile=(64, 64))
    source = open_image(path)
    decoded = []
    original = source._paste
    monkeypatch.setattr(source, "_paste", lambda index, *a: (decoded.append(index), original(index, *a)))
    source.read_rows(64, 128)
    assert sorted(decoded) == [4, 5, 6, 7]  # one row of four 64-px tiles out of 20
    source.close()


def test_pillow_reads_png_and_jpeg(tmp_path, pixels):
    rgb = pixels[:, :, :3]
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_array_equal(open_image(tmp_path / "a.png").read_rows(0, 301), rgb)
    jpeg = open_image(tmp_path / "a.jpg")
    assert (jpeg.height, jpeg.width, jpeg.bands) == (301, 203, 3)


def test_pillow_uses_an_explicit_pixel_limit_not_its_global_default(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    with pytest.raises(InputError, match="above the limit of 100,000.*--max-pixels"):
        PillowSource(path, max_pixels=100_000)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1000  # Pillow's own limit would refuse this image; ours allows it
        assert PillowSource(path, max_pixels=200_000).height == 300
        assert Image.MAX_IMAGE_PIXELS == 1000  # and is left as it was
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable|cannot be read|corrupt"),
        (b"II*\x00" + b"\xff" * 20, "not a readable TIFF"),
    ],
)
def test_unreadable_images_raise_input_errors(tmp_path, content, match):
    path = tmp_path / ("bad.tif" if content.startswith(b"II") else "bad.png")
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        open_image(path)


def test_truncated_jpeg_is_reported_as_corrupt(tmp_path, pixels):
    path = tmp_path / "cut.jpg"
    Image.fromarray(pixels[:, :, :3]).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(InputError, match="corrupt or truncated"):
        open_image(path)


def test_missing_file_and_zero_sized_array(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="empty"):
        ArraySource(np.zeros((0, 5, 3), np.uint8))


def _manifest() -> Manifest:
    return Manifest(
        schema_version=1,
        classes=("a", "b", "c"),
        palette=((0, 0, 0), (255, 0, 0), (0, 0, 255)),
        normalization=Normalization(mean=(0.5,) * 3, std=(0.25,) * 3),
        patch=PatchSpec(size=128, min_overlap=16),
        graphs={},
    )


def _rows(mask: np.ndarray, heights: list[int]):
    top = 0
    for h in heights:
        yield top, mask[top : top + h]
        top += h


def test_tiff_outputs_keep_geotiff_tags_and_are_written_in_strips(tmp_path, pixels):
    src_path = tmp_path / "geo.tif"
    tifffile.imwrite(src_path, pixels[:, :, :3], photometric="rgb", tile=(64, 64), extratags=GEO_EXTRATAGS + [NODATA_TAG])
    source = open_image(src_path)
    mask = np.random.default_rng(1).integers(0, 3, (301, 203), dtype=np.uint8)
    paths = OutputPaths(tmp_path / "o" / "m.tif", tmp_path / "o" / "c.tif", tmp_path / "o" / "v.tif", tmp_path / "o" / "s.json")
    write_outputs(source, _rows(mask, [50, 13, 100, 138]), paths, OutputOptions(format="tif", overlay=True, stats=True, rows_per_strip=32), _manifest())
    source.close()
    with tifffile.TiffFile(paths.mask) as written:
        page = written.pages.first
        np.testing.assert_array_equal(page.asarray(), mask)
        assert page.rowsperstrip == 32 and len(page.dataoffsets) == 10
        for code, _, _, value, _ in GEO_EXTRATAGS:
            got = page.tags[code].value
            assert (tuple(got) if isinstance(got, (tuple, list)) else got) == value, code
        assert NODATA_TAG[0] not in page.tags
    colour = tifffile.imread(paths.color)
    np.testing.assert_array_equal(colour, np.array(_manifest().palette, np.uint8)[mask])
    overlay = tifffile.imread(paths.overlay)
    expected = np.round(0.5 * pixels[:, :, :3] + 0.5 * colour).astype(np.uint8)
    np.testing.assert_array_equal(overlay, expected)
    stats = json.loads(paths.stats.read_text())
    assert [c["pixels"] for c in stats["classes"]] == np.bincount(mask.ravel(), minlength=3).tolist()


def test_png_outputs(tmp_path):
    mask = np.random.default_rng(2).integers(0, 3, (40, 70), dtype=np.uint8)
    paths = OutputOptions().paths_for(tmp_path / "in.jpg", tmp_path / "out")
    assert paths.mask.name == "in_mask.png" and paths.color.name == "in_color.png" and paths.overlay is None
    write_outputs(ArraySource(np.zeros((40, 70, 3), np.uint8)), _rows(mask, [40]), paths, OutputOptions(), _manifest())
    np.testing.assert_array_equal(np.asarray(Image.open(paths.mask)), mask)
    assert np.asarray(Image.open(paths.color)).shape == (40, 70, 3)
    assert paths.mask.stat().st_mode & 0o777 == 0o666 & ~_UMASK  # not the temporary file's 0600


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_an_error_midway_leaves_no_output_file(tmp_path, fmt):
    mask = np.zeros((300, 50), np.uint8)

    def failing_rows():
        yield 0, mask[:100]
        raise RuntimeError("backend exploded")

    out = tmp_path / "out"
    paths = OutputOptions(format=fmt, overlay=True, stats=True).paths_for(tmp_path / "x.png", out)
    with pytest.raises(RuntimeError, match="exploded"):
        write_outputs(ArraySource(np.zeros((300, 50, 3), np.uint8)), failing_rows(), paths, OutputOptions(format=fmt, overlay=True, stats=True), _manifest())
    assert list(out.iterdir()) == []


def test_a_writer_failure_closes_the_row_producer(tmp_path):
    """The producer's cleanup (stopping its worker threads) must run before the source is closed."""
    closed = []

    def rows():
        try:
            yield 5, np.zeros((10, 50), np.uint8)  # out of order: the writer fails on the first band
            yield 15, np.zeros((10, 50), np.uint8)
        finally:
            closed.append(True)

    paths = OutputOptions().paths_for(tmp_path / "x.png", tmp_path / "out")
    with pytest.raises(RuntimeError, match="out of order"):
        write_outputs(ArraySource(np.zeros((20, 50, 3), np.uint8)), rows(), paths, OutputOptions(), _manifest())
    assert closed == [True]


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="not a folder"):
        OutputOptions().paths_for(tmp_path / "x.png", blocker)
    paths = OutputPaths(blocker / "sub" / "m.png")
    with pytest.raises(InputError, match="cannot write an output here"):
        write_outputs(ArraySource(np.zeros((4, 4, 3), np.uint8)), _rows(np.zeros((4, 4), np.uint8), [4]), paths, OutputOptions(color=False), _manifest())
