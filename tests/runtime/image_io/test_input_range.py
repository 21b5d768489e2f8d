"""Pixel types (issue 13, item 1): the bundle says what it was trained on; other types are mapped on request or refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from runtime.bundle.manifest import InputPixels, Normalization, read_manifest
from runtime.errors import InputError
from runtime.image_io.input_range import InputRange, conform_source, parse_input_range
from runtime.image_io.readers import ArraySource
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.runtime.test_segmenter import scene

UINT8 = InputPixels("uint8", 0.0, 255.0)
RGB = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def segmenter(small_bundle) -> Segmenter:
    return Segmenter(small_bundle)


@pytest.fixture(scope="module")
def eight_bit():
    return scene(200, 230, 13)


def test_the_exported_manifest_names_the_trained_pixel_type(small_bundle):
    data = json.loads((small_bundle / "manifest.json").read_text())
    assert data["input_pixels"] == {"dtype": "uint8", "low": 0.0, "high": 255.0}
    assert read_manifest(small_bundle).input_pixels == UINT8


def test_a_manifest_from_before_the_field_reads_as_8_bit(small_bundle, tmp_path):
    data = json.loads((small_bundle / "manifest.json").read_text())
    del data["input_pixels"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).input_pixels == UINT8


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0,4095", InputRange(bounds=((0.0, 4095.0),))),
        ("0,4095/10,2047/0,1", InputRange(bounds=((0.0, 4095.0), (10.0, 2047.0), (0.0, 1.0)))),
        ("p2,p98", InputRange(percentiles=(2.0, 98.0))),
        (" P0.5, p99.5 ", InputRange(percentiles=(0.5, 99.5))),
        (None, None),
        ("", None),
    ],
)
def test_parse_input_range(text, expected):
    assert parse_input_range(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [("abc", "expected MIN,MAX"), ("1,2,3", "expected MIN,MAX"), ("10,5", "MIN < MAX"), ("0,inf", "MIN < MAX"), ("p50,p10", "0 <= low < high <= 100"), ("p0,p101", "<= 100")],
)
def test_bad_input_ranges_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_input_range(text)


def test_a_source_of_the_trained_type_passes_unchanged(eight_bit):
    source = ArraySource(eight_bit)
    assert conform_source(source, UINT8, RGB) is source


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int16, np.float64])
def test_other_pixel_types_are_refused_with_the_options_named(dtype):
    with pytest.raises(InputError, match=f"pixel type {np.dtype(dtype)} .*uint8 pixels in \\[0, 255\\].*--input-range 0,4095.*p2,p98"):
        conform_source(ArraySource(np.zeros((8, 8, 3), dtype)), UINT8, RGB)


def test_a_range_maps_linearly_and_clips():
    pixels = np.array([[[0, 2048, 4095], [5000, 100, 0]]], np.uint16)
    mapped = conform_source(ArraySource(pixels), UINT8, RGB, parse_input_range("0,4095")).read_rows(0, 1)
    np.testing.assert_allclose(mapped, [[[0.0, 2048 * 255 / 4095, 255.0], [255.0, 100 * 255 / 4095, 0.0]]], rtol=1e-5)


def test_per_band_ranges_and_nan():
    pixels = np.array([[[0.5, np.nan, 0.0]]], np.float32)
    mapped = conform_source(ArraySource(pixels), UINT8, RGB, parse_input_range("0,1/0,1/-1,1")).read_rows(0, 1)
    np.testing.assert_allclose(mapped, [[[127.5, 0.0, 127.5]]])
    with pytest.raises(InputError, match="gives 2 ranges but the image has 3 band"):
        conform_source(ArraySource(pixels), UINT8, RGB, parse_input_range("0,1/0,1"))


def test_percentile_stretch_uses_each_bands_own_range():
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.integers(100, 1100, (64, 64)), rng.integers(0, 4000, (64, 64)), np.full((64, 64), 7)], -1).astype(np.uint16)
    source = conform_source(ArraySource(pixels), UINT8, RGB, parse_input_range("p0,p100"))
    mapped = source.read_rows(0, 64)
    np.testing.assert_allclose(mapped[..., 0].min(), 0.0, atol=1e-3)
    np.testing.assert_allclose(mapped[..., 0].max(), 255.0, atol=1e-3)
    np.testing.assert_allclose(mapped[..., 1].max(), 255.0, atol=1e-3)
    assert np.all(mapped[..., 2] == 0.0)  # a constant band maps onto the low end


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_16_bit_and_float_scenes_agree_with_the_8_bit_mask(small_bundle, segmenter, eight_bit, tmp_path):
    """The issue's case: the same scene as 8-bit, 16-bit and float32 reflectance TIFFs."""
    reference = segmenter.segment(eight_bit)
    sixteen = eight_bit.astype(np.uint16) * 257  # 0..255 -> 0..65535
    twelve = eight_bit.astype(np.uint16) * 16  # 12 significant bits: 0..4080
    reflectance = eight_bit.astype(np.float32) / 255.0
    cases = [(sixteen, "0,65535"), (twelve, "0,4080"), (reflectance, "0,1")]
    for i, (pixels, text) in enumerate(cases):
        path = tmp_path / f"scene{i}.tif"
        tifffile.imwrite(path, pixels, photometric="rgb")
        with pytest.raises(InputError, match=f"pixel type {pixels.dtype}"):
            segmenter.segment_file(path, tmp_path / "refused")
        assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
        # Before the fix the runtime divided every pixel by 255 whatever its type: what that gave.
        old_agreement = _agreement(segmenter.scheduler.segment(ArraySource(pixels)), reference)
        mapped = Segmenter(small_bundle, options=SegmenterOptions(input_range=parse_input_range(text)))
        paths = mapped.segment_file(path, tmp_path / f"out{i}")
        from PIL import Image

        mask = np.asarray(Image.open(paths.mask))
        agreement = _agreement(mask, reference)
        print(f"{pixels.dtype} --input-range {text}: agreement with the 8-bit mask {agreement:.4f} (old behaviour: {old_agreement:.4f})")
        assert agreement >= 0.999
        assert old_agreement < 0.99  # the silent wrong mask the issue reports
