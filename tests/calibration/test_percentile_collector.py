"""The fast percentile collector against ONNX Runtime's own, on seeded activations."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")

from calibration.percentile_collector import PercentileCollector


def feeds(seed: int = 0) -> list[dict[str, list[np.ndarray]]]:
    """Three feeds whose range grows (so later feeds add bins), post-ReLU and signed tensors, large enough
    that even the 99.99th percentile has tens of values beyond it."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in (1.0, 3.0, 2.0):
        out.append(
            {
                "relu": [np.maximum(rng.standard_normal((4, 16, 64, 64), dtype=np.float32) * scale, 0)],
                "signed": [(rng.standard_t(3, size=(4, 64, 256)) * scale).astype(np.float32)],
            }
        )
    return out


def ranges(collector) -> dict[str, tuple[float, float]]:
    with contextlib.redirect_stdout(io.StringIO()):
        for feed in feeds():
            collector.collect(feed)
        result = collector.compute_collection_result()
    data = calibrate.TensorsData(calibrate.CalibrationMethod.Percentile, result)
    return {name: (float(data[name].range_value[0]), float(data[name].range_value[1])) for name in data}


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_matches_onnxruntime_histogram_collector(percentile: float) -> None:
    theirs = ranges(calibrate.HistogramCollector("percentile", True, 2048, 128, percentile, "same"))
    ours = ranges(PercentileCollector(percentile, 2048))
    assert ours.keys() == theirs.keys() == {"relu", "signed"}
    for name in ours:
        for a, b in zip(ours[name], theirs[name]):
            assert a == pytest.approx(b, rel=2e-3, abs=1e-6), name
    assert ours["relu"][0] == 0.0  # clamped to the values' minimum, as ONNX Runtime does
    assert ours["signed"][0] < 0.0 < ours["signed"][1]


def test_threshold_is_the_percentile_of_absolute_values() -> None:
    values = np.arange(1, 10001, dtype=np.float32).reshape(1, 1, 100, 100)
    collector = PercentileCollector(99.0, 10000)
    collector.collect({"x": [values]})
    low, high = collector.compute_collection_result()["x"].range_value
    assert float(high) == pytest.approx(9900.0, abs=2.0)
    assert float(low) == 1.0


def test_all_zero_tensor_has_zero_range() -> None:
    collector = PercentileCollector()
    collector.collect({"zero": [np.zeros((1, 4, 8, 8), np.float32)]})
    low, high = collector.compute_collection_result()["zero"].range_value
    assert float(low) == float(high) == 0.0


def test_nan_names_the_tensor() -> None:
    values = np.ones((1, 2, 4, 4), np.float32)
    values[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="'conv3_out'.*NaN"):
        PercentileCollector().collect({"conv3_out": [values]})


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="percentile"):
        PercentileCollector(percentile=0.0)
    with pytest.raises(ValueError, match="num_bins"):
        PercentileCollector(num_bins=1)
