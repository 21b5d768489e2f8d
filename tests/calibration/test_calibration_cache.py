"""The TensorRT calibration cache: format, round trip, versions, bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from calibration.calibration_cache import CalibrationCache, hex_to_scale, scale_to_hex, tensorrt_version_number
from runtime.errors import InputError


def test_scale_is_big_endian_ieee_hex():
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(2.0 / 127.0) == struct.pack(">f", 2.0 / 127.0).hex()
    assert hex_to_scale("3c010204") == pytest.approx(struct.unpack(">f", bytes.fromhex("3c010204"))[0])


def test_version_numbers_follow_tensorrt():
    assert tensorrt_version_number("10.3.0") == 100300
    assert tensorrt_version_number("10.0.1.6") == 100001
    assert tensorrt_version_number("8.6.1") == 8601
    with pytest.raises(InputError):
        tensorrt_version_number("latest")


def test_text_format_and_round_trip(tmp_path):
    amax = {"image": 2.64, "/backbone/stem/stem.0/Conv_output_0": 12.7, "local_features": 0.5, "dead": 0.0, "nan": float("nan")}
    cache = CalibrationCache.from_amax(amax, "10.2.0")
    text = cache.to_text()
    lines = text.splitlines()
    assert lines[0] == "TRT-100200-EntropyCalibration2"
    assert lines[1] == f"image: {struct.pack('>f', np.float32(2.64 / 127)).hex()}"
    assert "dead" not in text and "nan" not in text  # no scale, no line: TensorRT keeps those unquantized
    path = cache.write(tmp_path / "int8" / "global.calib.cache")
    back = CalibrationCache.read(path)
    assert back.version == 100200 and back.algorithm == "EntropyCalibration2"
    assert list(back.scales) == ["image", "/backbone/stem/stem.0/Conv_output_0", "local_features"]
    for name, value in back.scales.items():
        assert value == pytest.approx(amax[name] / 127.0, rel=1e-7)
        assert value == np.float32(amax[name] / 127.0)  # exactly the float32 written


def test_retarget_changes_only_the_header():
    cache = CalibrationCache.from_amax({"x": 1.27}, "10.0.0")
    moved = cache.retarget("10.8.0")
    assert moved.version == 100800 and moved.scales == cache.scales
    assert moved.to_text().splitlines()[1:] == cache.to_text().splitlines()[1:]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("TensorRT cache\nx: 3f800000\n", "first line"),
        ("TRT-100000-EntropyCalibration2\nx 3f800000\n", "line 2"),
        ("TRT-100000-EntropyCalibration2\nx: 3f8000\n", "line 2"),
    ],
)
def test_parse_rejects_malformed_caches(text, problem):
    with pytest.raises(InputError, match=problem):
        CalibrationCache.parse(text, where="c.cache")


def test_missing_cache_file_names_the_fix(tmp_path):
    with pytest.raises(InputError, match="glsnet-export build"):
        CalibrationCache.read(tmp_path / "none.cache")
