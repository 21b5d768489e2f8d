"""gpu-check's glsnet-cpp --device cuda rows: skipped in one line without the C++ build or a GPU-enabled ONNX
Runtime; the runner itself (the C ABI through ctypes) measured end to end on the CPU provider, where its masks
equal the Python runtime's."""

from __future__ import annotations

import numpy as np
import pytest

from export.gpu.cpp_runner import CppRunner, cpp_cuda_missing
from export.gpu.gpu_table import NOT_RUN, RAN, Candidate, Image, run_table
from runtime.errors import GlsnetError
from tests.runtime.cpp.test_cpp_runtime import _build, _scene


def test_without_the_cpp_build_the_row_is_skipped_in_one_line(small_bundle, tmp_path):
    reason = cpp_cuda_missing(tmp_path / "no-build", small_bundle, "fp32", {})
    assert reason is not None and "make cpp" in reason and "\n" not in reason
    rows = run_table([Candidate("glsnet-cpp --device cuda", "fp32", lambda: reason, lambda: None)], None, None, say=lambda line: None)
    assert [(r.status, r.reason) for r in rows] == [(NOT_RUN, reason)]


@pytest.fixture(scope="module")
def cpp_build():
    return _build("cpp")


def test_a_cpu_onnxruntime_makes_the_cuda_row_say_which_provider_is_missing(cpp_build, small_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider: the row would run")
    opened: dict = {}
    reason = cpp_cuda_missing(cpp_build, small_bundle, "fp32", opened)
    assert reason is not None and "CUDAExecutionProvider" in reason and "onnxruntime-gpu" in reason and "\n" not in reason
    assert opened == {}
    with pytest.raises(GlsnetError, match="no fp16 graphs|glsnet_open"):
        CppRunner(cpp_build, small_bundle, "fp16", "cuda")


def test_the_cpp_runner_measures_a_row_whose_masks_equal_the_python_runtime(cpp_build, small_bundle):
    from runtime.segmenter import Segmenter

    pixels = _scene(150, 170, seed=4)
    with Segmenter(small_bundle, precision="fp32") as segmenter:
        reference = segmenter.segment(pixels)
    candidate = Candidate("glsnet-cpp --device cpu", "fp32", lambda: None, lambda: CppRunner(cpp_build, small_bundle, "fp32", "cpu"))
    image = Image("scene", pixels, lambda: pixels.copy())
    (row,) = run_table([candidate], image, reference, repeats=1, in_flight_images=2, say=lambda line: None)
    assert row.status == RAN, row.reason
    assert row.agreement == 1.0 and row.latency_ms > 0 and row.images_per_s > 0 and row.peak_allocator_mb is None
    assert len(np.unique(reference)) > 1
